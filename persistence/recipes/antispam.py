"""The built-in recipe: the seed document's anti-spam text classifier, small enough to train in seconds.

The corpus is generated, not downloaded: short messages drawn from a spammy and a hammy
vocabulary with deliberate overlap, a shared filler vocabulary and a little label noise, so that a
fresh model is near chance, improves quickly, and never quite reaches 100 % on held-out data
(which makes "compare steps" and "keep best N by accuracy" meaningful).

Features are hashed bags of words. The hash is ``zlib.crc32``: Python's ``hash()`` is salted per
process, so a worker, a web process and a test would all disagree about which column a word is in.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import Dataset, GraphHandles, Recipe

FEATURE_DIM = 512
HIDDEN_UNITS = 32
NUM_CLASSES = 2  # 0 = ham, 1 = spam
LEARNING_RATE = 0.001

SPAM_WORDS = (
    "win winner cash prize click offer limited urgent cheap discount credit loan casino bonus "
    "guaranteed unsubscribe exclusive lottery claim reward miracle pills crypto investment rich "
    "million dollars verify suspended password congratulations selected gift card wire bitcoin"
).split()
HAM_WORDS = (
    "meeting project report schedule lunch team review draft attached notes tomorrow agenda "
    "family dinner weekend thanks question release budget slides presentation holiday birthday "
    "photos trip doctor appointment homework class minutes standup deadline feedback recipe garden"
).split()
# Words that both kinds of message use, so that single words are weak evidence on their own.
OVERLAP_WORDS = "free account update deal order call invoice payment link access new today".split()
FILLER_WORDS = (
    "the a to you your for and is this please now we our it on with time get here see just more "
    "all can will me my at be from have about that so"
).split()

SAMPLE_TEXTS = (
    "congratulations you win a free cash prize click the link now",
    "notes from the project meeting are attached see you tomorrow",
    "please verify your account payment today",
    "dinner with the family this weekend thanks",
)

_TOKEN = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def featurize(texts: Iterable[str], dim: int = FEATURE_DIM) -> np.ndarray:
    """Hashed bag of words, L2-normalised: float32 ``[len(texts), dim]``."""
    texts = list(texts)
    features = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for token in tokenize(text):
            features[row, zlib.crc32(token.encode("utf-8")) % dim] += 1.0
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    np.divide(features, norms, out=features, where=norms > 0)
    return features


def generate_corpus(size: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``size`` messages and their labels (int64, 1 = spam), identical for identical seeds."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels = np.zeros(size, dtype=np.int64)
    for i in range(size):
        spam = rng.random() < 0.4
        own, other = (SPAM_WORDS, HAM_WORDS) if spam else (HAM_WORDS, SPAM_WORDS)
        # How clearly this message shows its class: some are blatant, some are nearly neutral.
        clarity = rng.uniform(0.6, 1.0)
        words = []
        for _ in range(int(rng.integers(5, 13))):
            roll = rng.random()
            if roll < 0.35:
                words.append(FILLER_WORDS[rng.integers(len(FILLER_WORDS))])
            elif roll < 0.5:
                words.append(OVERLAP_WORDS[rng.integers(len(OVERLAP_WORDS))])
            elif rng.random() < clarity:
                words.append(own[rng.integers(len(own))])
            else:
                words.append(other[rng.integers(len(other))])
        texts.append(" ".join(words))
        # Label noise: real spam filters learn from user reports, and users mis-click.
        labels[i] = int(spam) ^ int(rng.random() < 0.03)
    return texts, labels


def _dense_logits(
    tf: Any, x: Any, hidden_kernel: Any, hidden_bias: Any, out_kernel: Any, out_bias: Any
) -> Any:
    hidden = tf.nn.relu(tf.matmul(x, hidden_kernel) + hidden_bias)
    return tf.add(tf.matmul(hidden, out_kernel), out_bias, name="logits")


class AntiSpamRecipe(Recipe):
    name = "antispam"
    description = (
        f"Anti-spam text classifier: hashed bag of words ({FEATURE_DIM} dims) -> dense "
        f"{HIDDEN_UNITS} ReLU -> softmax over ham/spam, Adam."
    )
    input_names = ["x"]
    output_names = ["probs"]
    batch_size = 64

    train_size = 2000
    eval_size = 500

    def build_graph(self) -> GraphHandles:
        from persistence.tfruntime import import_tensorflow

        tf = import_tensorflow()

        v1 = tf.compat.v1
        x = v1.placeholder(tf.float32, [None, FEATURE_DIM], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        glorot = v1.glorot_uniform_initializer()
        # Explicit variable scopes keep the checkpoint keys stable ("hidden/kernel", ...): the
        # var_list examples, resave and partial restore all refer to them by name.
        with v1.variable_scope("hidden"):
            hidden_kernel = v1.get_variable("kernel", [FEATURE_DIM, HIDDEN_UNITS], initializer=glorot)
            hidden_bias = v1.get_variable("bias", [HIDDEN_UNITS], initializer=v1.zeros_initializer())
        with v1.variable_scope("output"):
            out_kernel = v1.get_variable("kernel", [HIDDEN_UNITS, NUM_CLASSES], initializer=glorot)
            out_bias = v1.get_variable("bias", [NUM_CLASSES], initializer=v1.zeros_initializer())
        logits = _dense_logits(tf, x, hidden_kernel, hidden_bias, out_kernel, out_bias)
        probs = tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits), name="loss"
        )
        predictions = tf.argmax(logits, axis=1, name="predictions")
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, y), tf.float32), name="accuracy")
        global_step = v1.train.get_or_create_global_step()
        train_op = v1.train.AdamOptimizer(LEARNING_RATE).minimize(loss, global_step=global_step, name="train")
        return GraphHandles(
            inputs={"x": x},
            labels=y,
            outputs={"probs": probs},
            loss=loss,
            train_op=train_op,
            global_step=global_step,
            metrics={"accuracy": accuracy},
        )

    def make_data(self, seed: int = 0) -> Dataset:
        texts, labels = generate_corpus(self.train_size + self.eval_size, seed=seed)
        features = featurize(texts)
        n = self.train_size
        return Dataset(
            train_inputs={"x": features[:n]},
            train_labels=labels[:n],
            eval_inputs={"x": features[n:]},
            eval_labels=labels[n:],
        )

    def sample_input(self) -> dict[str, np.ndarray]:
        return {"x": featurize(SAMPLE_TEXTS)}

    def featurize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Feed for classifying raw messages with a restored graph or a frozen ``.pb``."""
        return {"x": featurize(texts)}

    def build_tf2_module(self) -> Any:
        return _build_tf2_module()


def _build_tf2_module() -> Any:
    from persistence.tfruntime import import_tensorflow

    tf = import_tensorflow()

    class Dense(tf.Module):
        def __init__(self, name: str, units_in: int, units_out: int) -> None:
            super().__init__(name=name)
            with self.name_scope:
                self.kernel = tf.Variable(tf.zeros([units_in, units_out]), name="kernel")
                self.bias = tf.Variable(tf.zeros([units_out]), name="bias")

    class AntiSpamModule(tf.Module):
        """TF2 twin of the TF1 graph: same variable names and shapes, a ``serve`` signature.

        Weights start at zero; load them from a TF1 checkpoint with ``load_tf1_checkpoint`` or
        from a TF2 object checkpoint with ``tf.train.Checkpoint(model=module).restore(...)``.
        """

        def __init__(self) -> None:
            super().__init__(name="antispam")
            self.hidden = Dense("hidden", FEATURE_DIM, HIDDEN_UNITS)
            self.output = Dense("output", HIDDEN_UNITS, NUM_CLASSES)
            self.global_step = tf.Variable(0, dtype=tf.int64, name="global_step", trainable=False)

        def tf1_variables(self) -> dict[str, Any]:
            """TF1 checkpoint key -> the variable that mirrors it."""
            return {
                "hidden/kernel": self.hidden.kernel,
                "hidden/bias": self.hidden.bias,
                "output/kernel": self.output.kernel,
                "output/bias": self.output.bias,
                "global_step": self.global_step,
            }

        def load_tf1_checkpoint(self, prefix: str) -> None:
            reader = tf.train.load_checkpoint(prefix)
            for key, variable in self.tf1_variables().items():
                if reader.has_tensor(key):
                    variable.assign(reader.get_tensor(key))

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURE_DIM], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            logits = _dense_logits(
                tf, x, self.hidden.kernel, self.hidden.bias, self.output.kernel, self.output.bias
            )
            return {"probs": tf.nn.softmax(logits, name="probs")}

    return AntiSpamModule()
