"""A simulated Windows host: WS-Management + PSRP on loopback, for tests, the demo and benchmarks.

No PowerShell runs here: the host recognises each script it is sent and carries out its meaning
in Python. It lives outside the built collection.
"""
