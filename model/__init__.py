"""Torch modules of SliderGAN: generator with attention mask, PatchGAN discriminator with a
regression head, identity embedder, losses.  Knows no other part and reads no files."""
from model.networks import (Discriminator, apply_generator, Generator, ModelConfigError, build_networks,  # noqa: F401
                            compose, load_from_checkpoint_state, model_config_from_train, resize_images,
                            to_network_input)
