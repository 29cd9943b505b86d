"""Data: image reading, data set registry, splits, decoded cache, augmentation."""
