from capmill.media.image import ImageConfig, decode_image

__all__ = ["ImageConfig", "decode_image"]
