"""Op definitions: one module per op family, each a public function over a torch.library custom op."""
