"""Layer 4: data — the bundled MNIST digits, ImageNet class names, image datasets and pretokenized codes."""
