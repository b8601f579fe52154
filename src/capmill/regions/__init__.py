"""Regions of an image: boxes read from a record (or a detector), normalised, cropped (see `boxes`)."""

from capmill.regions.boxes import Box, crop, parse_boxes

__all__ = ["Box", "crop", "parse_boxes"]
