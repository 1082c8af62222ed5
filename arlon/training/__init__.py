"""Training: one shared loop (`trainer.train`) and one `Stage` per component (`stages`)."""
