"""Masks from the image itself: text detection (`--mask-from text`) and text-prompted segmentation
(`--mask-from prompt:<what>`)."""
