"""Models: dense image-text encoders and the sparse (D2S) head."""
