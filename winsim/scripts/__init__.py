"""What the simulated host does with each script it is sent (see ``dispatch.execute``)."""
