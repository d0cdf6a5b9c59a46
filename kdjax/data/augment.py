"""Per-example image preprocessing in TensorFlow: the tfds loader's ops.

Recipes (`Augment`, `AUGMENTATIONS`) are in specs.py. Every random choice is a
`tf.image.stateless_*` op keyed by a per-example seed derived from (seed,
epoch, example index), so an example's augmentation is the same whatever the
batch, process count or resume point. Images are uint8 (or float in [0, 255]
after a resize) until `normalize`.
"""

import tensorflow as tf

from kdjax.data import splits

# The recipes are defined without TensorFlow (the NumPy loader uses them too);
# they are re-exported here, where the ops that apply them live.
from kdjax.data.specs import AUGMENTATIONS  # noqa: F401
from kdjax.data.specs import Augment
from kdjax.data.specs import get_augment  # noqa: F401
from kdjax.data.specs import INCEPTION_CROP
from kdjax.data.specs import NO_AUGMENT  # noqa: F401
from kdjax.data.specs import PAD_CROP


def pad_and_random_crop(
  image: tf.Tensor, seed: tf.Tensor, pad: int, padding_mode: str
) -> tf.Tensor:
  """Pads `pad` pixels per side, then crops a random window of the old size.

  Offsets are uniform over the 2*pad+1 positions per axis, as in torchvision's
  RandomCrop(size, padding=pad).
  """
  if pad == 0:
    return image
  padded = tf.pad(
    image, [[pad, pad], [pad, pad], [0, 0]], mode=padding_mode.upper()
  )
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _sample_crop_window(
  image_shape: tf.Tensor, seed: tf.Tensor, area_range, aspect_ratio_range
) -> tf.Tensor:
  """Random-resized-crop window [y, x, h, w]; the whole image as fallback."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    image_shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=aspect_ratio_range,
    area_range=area_range,
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def inception_crop(
  image: tf.Tensor,
  seed: tf.Tensor,
  size: int,
  area_range=(0.08, 1.0),
  aspect_ratio_range=(3 / 4, 4 / 3),
) -> tf.Tensor:
  """Random-resized-crop to (size, size); returns float32 in [0, 255].

  ``image``: a decoded (H, W, C) image, or an encoded JPEG string, then decoded
  only inside the crop window. ``seed``: stateless seed, shape [2].
  ``area_range``, ``aspect_ratio_range``: see `Augment`.
  """
  if image.dtype == tf.string:  # Decoding only the window: fast ImageNet.
    shape = tf.image.extract_jpeg_shape(image)
    window = _sample_crop_window(shape, seed, area_range, aspect_ratio_range)
    cropped = tf.image.decode_and_crop_jpeg(image, window, channels=3)
  else:
    window = _sample_crop_window(
      tf.shape(image), seed, area_range, aspect_ratio_range
    )
    cropped = tf.slice(
      image, [window[0], window[1], 0], [window[2], window[3], -1]
    )
  return tf.image.resize(
    cropped, [size, size], method='bilinear', antialias=True
  )


def resize_and_center_crop(
  image: tf.Tensor, size: int, resize_size: int
) -> tf.Tensor:
  """Resizes the short side to `resize_size`, then center-crops (size, size).

  The ImageNet evaluation transform (Resize(256) + CenterCrop(224) at the
  default size). Accepts an encoded JPEG or a decoded image; returns float32 in
  [0, 255].
  """
  if image.dtype == tf.string:
    image = tf.io.decode_jpeg(image, channels=3)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize_size / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  # Rounding can leave the short side one pixel under `size`.
  new_shape = tf.maximum(new_shape, size)
  image = tf.image.resize(image, new_shape, method='bilinear', antialias=True)
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  return tf.slice(image, [top, left, 0], [size, size, -1])


def fit_to_size(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """Brings a fixed-size image (H, W, C) to (size, size) by `splits.fit_plan`.

  'pad' centers the image on a zero canvas and falls back to resizing when
  shrinking; 'resize' resizes bilinearly with antialiasing.
  """
  plan = splits.fit_plan(image.shape[0], image.shape[1], size, method)
  if plan.kind == 'keep':
    return image
  if plan.kind == 'pad':
    (top, _), (left, _) = plan.pads
    return tf.image.pad_to_bounding_box(image, top, left, size, size)
  return tf.image.resize(image, [size, size], method='bilinear', antialias=True)


def augment_image(
  image: tf.Tensor, seed: tf.Tensor, augment: Augment, size: int
) -> tf.Tensor:
  """Applies a training recipe to one image: (size, size, C), uint8 or float32.

  ``image``: decoded (size, size, C) for 'pad_crop' and 'none'; decoded or an
  encoded JPEG of any size for 'inception_crop'. ``seed``: stateless
  per-example seed, shape [2]. Values stay in [0, 255].
  """
  crop_seed, flip_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, num=2)
  )
  if augment.kind == PAD_CROP:
    image = pad_and_random_crop(
      image, crop_seed, augment.pad, augment.padding_mode
    )
  elif augment.kind == INCEPTION_CROP:
    image = inception_crop(
      image, crop_seed, size, augment.area_range, augment.aspect_ratio_range
    )
  if augment.flip:
    image = random_flip(image, flip_seed)
  return image


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
  """[0, 255] image -> float32 (x / 255 - mean) / std, per channel."""
  mean = tf.constant(mean, tf.float32) * 255.0
  std = tf.constant(std, tf.float32) * 255.0
  return (tf.cast(image, tf.float32) - mean) / std
