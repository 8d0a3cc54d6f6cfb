"""Test helpers: the product's processes started as a user starts them."""
