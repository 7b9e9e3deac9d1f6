"""Supervised fine-tuning (the cold start on reasoning samples; also the demo's base model).

    python -m jax_tinyr1.train.sft --config configs/FILE.yaml [section.key=value ...]

What trains is `sft.trainable` (the language model and the connector by default). Data: the
cold-start JSON format (`data.train`); only the response and <|endoftext|> are supervised.
"""

import sys

from jax_tinyr1.train.run import main

if __name__ == "__main__":
    sys.exit(main(None, stage="sft", description=__doc__))
