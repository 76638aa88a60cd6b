"""Test helper: a ``torch.utils.data.Dataset`` whose items are ``x[i]`` (the training loops take
any Dataset of images)."""
import torch


class TensorItems(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]
