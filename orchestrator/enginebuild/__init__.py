"""Provisioning llama-server: build variants, proofs by real generation, cached build records.

Standard library only: ``bin/provision-engine`` runs it with any ``python3`` before a virtual
environment exists, and the daemon reads the same records to choose its engine.
"""
