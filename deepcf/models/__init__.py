"""The nets (one file each) and the contract they share (contract.py)."""
