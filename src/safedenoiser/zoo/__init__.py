"""The model zoo this project trains and ships: Fashion-MNIST image models and their judge (``images``), the
pixel text-to-image pipeline (``t2i``) and the latent testbed (``latent``)."""
