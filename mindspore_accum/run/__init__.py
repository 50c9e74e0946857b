"""What a run keeps and guards, for both engines: settings, the training state, files, the lock, signals,
checkpoints."""
