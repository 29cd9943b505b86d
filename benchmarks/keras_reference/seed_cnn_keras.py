"""The original recipe's seed CNN in Keras 3 / TensorFlow, for side-by-side speed.

Not part of medcls: run by benchmarks/throughput.py in an environment with
TensorFlow (`pip install -r benchmarks/keras_reference/requirements.txt`).
Prints one JSON line: training images/s per epoch (data included: decode and
resize in epoch 1, then tf.data's in-memory cache, as medcls' decode cache),
batch-32 inference images/s, and single-image latency.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402


def seed_cnn(size: int) -> keras.Model:
    """Conv2D 32-64-64-128-256 (3x3 ReLU, 2x2 max-pool), Flatten, Dense 128, 64, sigmoid."""
    model = keras.Sequential([keras.Input((size, size, 1)), layers.Rescaling(1 / 255.0)])
    for filters in (32, 64, 64, 128, 256):
        model.add(layers.Conv2D(filters, 3, activation="relu"))
        model.add(layers.MaxPooling2D(2))
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(1, activation="sigmoid"))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def dataset(files: list[str], labels: list[int], size: int, batch: int) -> tf.data.Dataset:
    def load(path, label):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=1)
        return tf.image.resize(img, (size, size)), label

    ds = tf.data.Dataset.from_tensor_slices((files, labels)).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).cache().prefetch(tf.data.AUTOTUNE)


class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


PASSES = 3  # inference passes over the images, as in benchmarks/throughput.py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file_list", help="text file: one 'path<TAB>label' per line")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    rows = [line.rstrip("\n").split("\t") for line in open(args.file_list) if line.strip()]
    files, labels = [r[0] for r in rows], [int(r[1]) for r in rows]
    keras.utils.set_random_seed(0)
    model = seed_cnn(args.size)
    ds = dataset(files, labels, args.size, args.batch)
    timer = EpochTimes()
    model.fit(ds.shuffle(64), epochs=args.epochs, verbose=0, callbacks=[timer])
    n = len(files)
    images = np.concatenate([x.numpy() for x, _ in ds])
    model.predict(images[: args.batch], verbose=0)  # warm-up
    infer = 0.0
    for _ in range(PASSES):  # the best pass: the machine's noise only ever slows a pass down
        t = time.perf_counter()
        model.predict(images, batch_size=args.batch, verbose=0)
        infer = max(infer, n / (time.perf_counter() - t))
    one = tf.constant(images[:1])
    model(one, training=False)
    lat = []
    for _ in range(50):
        t = time.perf_counter()
        model(one, training=False)
        lat.append(time.perf_counter() - t)
    print(json.dumps({
        "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}",
        "train_images_per_s": [round(n / s, 2) for s in timer.seconds],
        "infer_images_per_s": round(infer, 2),
        "single_latency_ms": round(1000 * float(np.median(lat)), 3),
        "threads": {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter": tf.config.threading.get_inter_op_parallelism_threads()},
    }))


if __name__ == "__main__":
    main()
