"""Post-training: dialog data with loss masks from the chat renderer, and the SFT / reward / DPO losses."""
