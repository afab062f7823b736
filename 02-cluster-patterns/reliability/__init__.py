"""Reliability patterns of the ZeroMQ Guide, chapter 4, one standalone lesson per file.

Each module runs as a script (``python 02-cluster-patterns/reliability/NAME.py ROLE``) and
uses only the standard library and pyzmq, so a learner can copy one file. The week-2
cluster (coordinator, worker, heartbeat) is these ideas hardened; these files show them bare.
"""
