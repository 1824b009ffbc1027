"""The federated parts of fedgate that need no Flower: the message protocol, client shards
and local rounds, gate profiles, server-side evaluation, run directories and reports.

``clients/`` and ``server/`` turn these into a Flower ClientApp and ServerApp.
"""
