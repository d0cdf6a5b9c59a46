"""Mock tfds datasets, so tests run the real CIFAR/ImageNet code paths offline.

    import tfds_mocks as data_testing   # tests/ is on the tests' sys.path

    with data_testing.mock_dataset('cifar10', num_examples={'train': 64}):
      source = kdjax.data.build_input('cifar10', 'train', ...)

Inside the context every tfds builder reads its metadata (split names and
sizes, label names) from the committed fixtures in tests/fixtures/tfds and
yields random examples. Unlike plain `tfds.testing.mock_data`, which returns
`num_examples` records for any split or slice, the mock here honours the split
sizes and slices: 'train[50%:]' yields the second half of 'train', so
`tfds.split_for_jax_process` gives processes disjoint records, as on real data.
Record i of a split is the same on every read.
"""

import contextlib
import json
import os
import shutil
import tempfile
import zlib
from typing import Callable, Iterator
from unittest import mock

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import dataset_builder
from tensorflow_datasets.testing import mocking

FIXTURES_DIR = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'tfds'
)


def _absolute_ranges(builder, split) -> list[tuple[str, int, int]]:
  """[(split name, start, stop)] that `split` (maybe sliced) reads."""
  instructions = tfds.core.splits.AbstractSplit.from_spec(split).to_absolute(
    builder.info.splits
  )
  splits = builder.info.splits
  # None boundaries mean the whole split.
  return [
    (
      i.splitname,
      i.from_ or 0,
      splits[i.splitname].num_examples if i.to is None else i.to,
    )
    for i in instructions
  ]


def _shard_position(shard_lengths, index) -> tuple[int, int]:
  for shard, length in enumerate(shard_lengths):
    if index < length:
      return shard, index
    index -= length
  raise IndexError(index)


def _mock_as_dataset(
  self, split, decoders=None, read_config=None, shuffle_files=False
):
  """Stand-in for `FileReaderBuilder._as_dataset` honouring split slices."""
  del shuffle_files  # Records come in index order, like shuffle_files=False.
  features = self.info.features
  ranges = _absolute_ranges(self, split)

  def records():
    for split_name, start, stop in ranges:
      generator = mocking.RandomFakeGenerator(
        features, num_examples=stop, seed=zlib.crc32(split_name.encode())
      )
      shard_lengths = self.info.splits[split_name].shard_lengths
      for index in range(start, stop):
        shard, position = _shard_position(shard_lengths, index)
        tfds_id = (
          f'{self.name}-{split_name}.tfrecord-{shard:05d}-of-'
          f'{len(shard_lengths):05d}__{position}'
        )
        yield features.serialize_example(generator[index]), tfds_id

  ds = tf.data.Dataset.from_generator(
    records,
    output_signature=(
      tf.TensorSpec([], tf.string),
      tf.TensorSpec([], tf.string),
    ),
  )
  ds = ds.apply(
    tf.data.experimental.assert_cardinality(
      sum(stop - start for _, start, stop in ranges)
    )
  )

  def decode(serialized, tfds_id):
    example = features.deserialize_example(serialized, decoders=decoders)
    if read_config is not None and read_config.add_tfds_id:
      example = {'tfds_id': tfds_id, **example}
    return example

  return ds.map(decode)


def _write_fixture_copy(
  name: str,
  fixtures_dir: str,
  out_dir: str,
  num_examples: int | dict[str, int] | None,
) -> None:
  source = os.path.join(fixtures_dir, name)
  if not os.path.isdir(source):
    raise FileNotFoundError(
      f'No tfds metadata fixture for {name!r} in {fixtures_dir}; available: '
      f'{sorted(os.listdir(fixtures_dir))}.'
    )
  shutil.copytree(source, os.path.join(out_dir, name))
  if num_examples is None:
    return
  for version in os.listdir(os.path.join(out_dir, name)):
    info_path = os.path.join(out_dir, name, version, 'dataset_info.json')
    with open(info_path) as f:
      info = json.load(f)
    for split_info in info['splits']:
      split_name = split_info['name']
      if isinstance(num_examples, int):
        count = num_examples
      elif split_name in num_examples:
        count = num_examples[split_name]
      else:
        continue
      split_info['shardLengths'] = [str(count)]
    with open(info_path, 'w') as f:
      json.dump(info, f, indent=2)


@contextlib.contextmanager
def mock_dataset(
  name: str | tuple[str, ...],
  num_examples: int | dict[str, int] | None = None,
  *,
  fixtures_dir: str = FIXTURES_DIR,
) -> Iterator[str]:
  """Mocks tfds datasets with random records and committed metadata.

  Args:
    name: dataset(s) to expose: 'cifar10', 'cifar100', 'imagenet2012' (any
      folder of `fixtures_dir`).
    num_examples: split sizes, overriding the fixtures' (cifar: train 256, test
      100; imagenet2012: train 64, validation 40): one count for every split,
      or {split: count}.
    fixtures_dir: folder of `<name>/<version>/dataset_info.json` fixtures.

  Yields:
    The mocked tfds data_dir. Every builder created inside the context reads
    from it whatever data_dir it is given, so a dataset not listed in `name`
    (mnist5k included) looks unprepared there.
  """
  names = (name,) if isinstance(name, str) else tuple(name)
  # tfds.testing.mock_data wraps every `as_dataset` call in
  # `tfds.testing.MockFs`, which swaps the tf.io.gfile and epath backends for a
  # throwaway directory, process-wide, while the call runs. Any other thread
  # writing files then (an orbax checkpoint committing in the background while
  # the trainer builds its next epoch's pipeline) writes them into that
  # directory, where they are lost. The metadata fixtures are real files in
  # `data_dir`, so the unwrapped `as_dataset` works as is: keep it.
  unwrapped_as_dataset = dataset_builder.DatasetBuilder.as_dataset
  with tempfile.TemporaryDirectory(prefix='kdjax_mock_tfds_') as data_dir:
    for dataset_name in names:
      _write_fixture_copy(dataset_name, fixtures_dir, data_dir, num_examples)
    with (
      tfds.testing.mock_data(
        data_dir=data_dir,
        policy=tfds.testing.MockPolicy.USE_FILES,
        as_dataset_fn=_mock_as_dataset,
      ),
      mock.patch.object(
        dataset_builder.DatasetBuilder, 'as_dataset', unwrapped_as_dataset
      ),
    ):
      yield data_dir


def rewrite_record(
  path: str, index: int, edit: Callable[[bytes], bytes]
) -> None:
  """Replaces record `index` of the TFRecord file `path` by `edit(record)`.

  For tests of how the pipeline meets damaged data.
  """
  records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
  records[index] = edit(records[index])
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)


def edit_example(record: bytes, **features: bytes | int) -> bytes:
  """`record`, a serialized tf.train.Example, with the named features replaced.

  A bytes value replaces a bytes feature, an int an int64 feature.
  """
  example = tf.train.Example.FromString(record)
  for key, value in features.items():
    feature = example.features.feature[key]
    if isinstance(value, bytes):
      feature.bytes_list.value[:] = [value]
    else:
      feature.int64_list.value[:] = [value]
  return example.SerializeToString()
