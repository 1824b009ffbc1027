"""Launchers: start a federation in Flower's simulation runtime from the command line
(``fedgate simulate``), and the process handling every launcher and test shares (free
loopback ports, Flower's environment, stopping process trees by PID)."""
