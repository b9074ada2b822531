"""The drag engine: DragGAN motion supervision and point tracking on StyleGAN2 features."""
