"""The GPU daemon: owns models and drag sessions, serves the ZeroMQ protocol.

Importing this package must stay cheap and torch-free: the Krita plugin imports
`daemon.protocol` and `daemon.client` from it.
"""

__version__ = "0.1.0"
