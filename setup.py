"""evejax: self-evolving vision-language models in JAX (EVE, MM-Zero, EvoLMM)."""
import setuptools

setuptools.setup(
    name="evejax",
    version="0.1.0",
    description="Self-evolving VLMs in JAX: EVE, MM-Zero and EvoLMM on one core.",
    packages=setuptools.find_packages(include=["evejax", "evejax.*"]),
    package_data={"evejax": ["assets/*", "data/transforms/*.py"]},
    python_requires=">=3.11",
    # Ranges the code supports; upper bounds where a next release can change
    # numbers or pixels. constraints.txt pins the exact versions last tested.
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "ml_collections>=1.1",
        "absl-py>=2.1",
        "numpy>=1.26,<3",
        "pillow>=10,<14",
        "tokenizers>=0.21",
        "safetensors>=0.5",
        "cairosvg>=2.7,<3",
        "imagehash>=4.3",
        "sacrebleu>=2.4",
        "scipy>=1.11",
        "math-verify>=0.7",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "psutil>=5.9",
        # MM-Zero's co-evolution chart; the plotting-Python sandbox contract.
        "matplotlib>=3.8,<3.12",
        # The evaluator reads benchmarks saved by HF datasets (arrow, parquet).
        "pyarrow>=15",
    ],
    extras_require={
        # Test-only: transformers' torch path is the numerical reference.
        "test": [
            "pytest>=8",
            # The fast tier runs on two workers (README: -n 2).
            "pytest-xdist>=3.6",
            "torch==2.13.0",
            "transformers>=5.0,<6",
            # tests/lora_peft_test.py: LoRA adapters interchange with peft's.
            "peft>=0.21,<1",
            # tests/eval_readers_test.py writes benchmarks with HF datasets.
            "datasets>=3",
            # tests/colab_test.py executes the notebooks in colabs/.
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
        # Source images from any TFDS dataset by name (array_record, no TensorFlow).
        "tfds": ["tensorflow-datasets>=4.9", "array-record>=0.5"],
        # `python -m lmms_eval --model evejax` (evejax/eval/lmms_plugin.py). lmms-eval 0.7.3
        # imports filelock._api, gone in filelock 4; its wandb pin needs protobuf < 7 (README).
        "lmms": ["lmms-eval==0.7.3", "filelock<4"],
        # The TPU compiler on a machine without TPUs (evejax.tools.aot_compile,
        # plan_memory --target): jax's own tpu extra, i.e. the libtpu that this
        # jax version needs (x86_64 Linux wheels only).
        "tpu": ["jax[tpu]; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
    # lmms-eval finds its `--model evejax` here.
    entry_points={"lmms_eval.models": ["evejax = evejax.eval.lmms_plugin:manifests"]},
)
