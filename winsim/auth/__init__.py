"""How a simulated host authenticates a client, as WinRM does: Basic, Negotiate (NTLM or Kerberos,
through pyspnego's acceptor), WinRM message encryption over HTTP, channel binding over HTTPS,
and TLS client certificates. The server (``winsim.server``) asks a host's ``Gate`` about each
request and never sees a token or a password.
"""
