"""Manifests, storage, image and mask decoding, crop/paste geometry and output writers."""
