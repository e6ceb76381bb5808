"""A trainer the dashboard did not start: a TF1 ``Saver`` with ``max_to_keep`` and ``global_step``
suffixes, plus scalar summaries written by ``tf.compat.v1.summary.FileWriter`` beside the
checkpoints, the way Estimator's ``model_dir`` looks. Run as a script (its own process):

    python tests/external_trainer.py DIR --saves 8 --interval 1.0 --max-to-keep 2 [--summaries]

Prints ``ready`` once TensorFlow is imported and the graph built, then one line per save:
``saved PREFIX INDEX_MTIME`` (the ``.index`` file's modification time: when it was written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--saves", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between saves")
    parser.add_argument("--max-to-keep", type=int, default=2)
    parser.add_argument("--steps-per-save", type=int, default=10)
    parser.add_argument("--summaries", action="store_true")
    parser.add_argument("--prefix", default="model.ckpt")
    parser.add_argument("--start", type=float, default=0.0, help="wait until this time.time() before the first save")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    v1 = tf.compat.v1
    os.makedirs(args.directory, exist_ok=True)
    with tf.Graph().as_default():
        step = v1.train.get_or_create_global_step()
        weights = v1.get_variable("w", shape=[4], initializer=v1.zeros_initializer())
        loss = tf.reduce_sum(tf.square(weights - 1.0))
        train = v1.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)
        summary = v1.summary.scalar("loss", loss)
        saver = v1.train.Saver(max_to_keep=args.max_to_keep)
        writer = v1.summary.FileWriter(args.directory) if args.summaries else None
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            print("ready", flush=True)
            if args.start > time.time():
                time.sleep(args.start - time.time())
            for i in range(args.saves):
                for _ in range(args.steps_per_save):
                    _, value, at = sess.run([train, summary, step])
                    if writer is not None:
                        writer.add_summary(value, global_step=at)
                if writer is not None:
                    writer.flush()
                prefix = saver.save(sess, os.path.join(args.directory, args.prefix), global_step=step)
                written = os.stat(prefix + ".index").st_mtime
                print(f"saved {os.path.basename(prefix)} {written:.3f}", flush=True)
                if i + 1 < args.saves:
                    time.sleep(args.interval)
            if writer is not None:
                writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
