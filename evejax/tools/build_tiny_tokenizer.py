"""Builds the built-in tiny tokenizer: evejax/assets/tiny_tokenizer.json.

    python -m evejax.tools.build_tiny_tokenizer [--out=PATH]

A byte-level BPE (2048 ids) trained with the `tokenizers` library on a corpus
generated here from a fixed seed, so the file needs no download and is the
same on every machine: English task prompts, Python image-editing code with
PIL, SVG, numbers, \\boxed{} answers, think blocks and markdown fences -- the
text the tiny models see in tests and smoke runs.

Layout of the ids (the contract of `evejax.models.presets.tiny`):
  0..6      BUILTIN_SPECIAL_TOKENS, in order (special: skipped when decoding
            with skip_special_tokens=True)
  7..2045   the 256 byte symbols and learned merges
  2046      "<think>", 2047 "</think>" (ordinary added tokens, kept on decode)

The pre-tokenizer splits like Qwen2's (its published regex, digits one by
one) and then maps bytes to symbols, so every string is encodable and decodes
back exactly. There is no normaliser: NFC would break exact round trips.
"""
from __future__ import annotations

import os
import random
import re
import tempfile

from absl import app
from absl import flags
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from evejax.models import presets

VOCAB_SIZE = 2048
THINK_TOKENS = ("<think>", "</think>")
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "assets", "tiny_tokenizer.json")

# Qwen2's pre-tokenization regex (from its tokenizer.json): contractions,
# words with one leading non-letter, single digits, punctuation runs, newlines.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_SEED = 20240601
_CORPUS_DOCS = 1600

_OBJECTS = ("circle", "square", "triangle", "car", "tree", "house", "dog",
            "cat", "bar", "line", "arrow", "label", "box", "star", "person",
            "bottle", "chair", "table", "window", "road", "cloud", "flower")
_COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange",
           "purple", "gray", "pink", "brown", "cyan")
_WHERE = ("top left", "top right", "bottom left", "bottom right", "center",
          "left side", "right side", "upper half", "lower half")
_QUESTIONS = (
    "How many {o}s are in the image?",
    "What color is the {o} in the {w}?",
    "Which object is closest to the {o}?",
    "Is the {c} {o} larger than the {o2}?",
    "What is the value of the tallest bar in the chart?",
    "Which option shows the image after the edit with {p}?",
    "Which parameters produced the edited image?",
    "What is the difference between the largest and smallest values?",
    "In which year did the line reach its maximum?",
    "Describe the {c} {o} near the {w}.",
    "What fraction of the image is covered by the {c} region?",
    "How many degrees was the image rotated?",
)
_INSTRUCTIONS = (
    "You are a helpful assistant.",
    "Look at the image carefully and answer the question.",
    "Think step by step inside <think> </think> tags, then give the final "
    "answer in \\boxed{}.",
    "Write a Python function edit_image(img, **params) that returns a new "
    "PIL image, and a list args_list of exactly 4 parameter dicts.",
    "Each of the 4 results must look clearly different from the others.",
    "Do not use randomness and do not save files.",
    "Answer with the letter of the correct option.",
    "Write SVG code that draws the described figure.",
    "Ask one question about the image that has a single short answer.",
    "Put the question inside <question> </question> and the answer inside "
    "<answer> </answer>.",
    "Propose a concept with an easy question and a hard question.",
    "The coordinates are absolute pixels of the original image.",
)
_TAGS = ("content_type", "caption", "easy_question", "easy_answer",
         "hard_question", "hard_answer", "question", "answer")
# Common words of image descriptions, questions, math and code, for prose.
_WORDS = tuple(dict.fromkeys("""
the of and to in is that it for on with as was at by this be are from or have
an they which one you were her all she there would their we him been has when
who will more no if out so said what up its about into than them can only
other new some could time these two may then do first any my now such like
our over man me even most made after also did many before must through back
years where much your way well down should because each just those people how
too little state good very make world still own see men work long get here
between both life being under never day same another know while last might us
great old year off come since against go came right used take three
image picture photo scene view chart graph plot table figure diagram map shape
object region area pixel color colour light dark bright shadow edge corner
border frame background foreground center middle left top bottom above below
behind front near far inside outside around across along beside next small
large big tiny huge tall short wide narrow thick thin round square flat curved
straight diagonal vertical horizontal upper lower second third fourth total
count number value sum average mean median maximum minimum percent ratio
difference increase decrease rise fall change trend month week hour minute
label title axis legend scale unit line bar column row cell point dot mark
symbol arrow text word letter digit option answer question reason therefore
however although whether either neither every several few less least better
worse best worst equal greater smaller higher same different similar opposite
correct wrong true false possible impossible likely unlikely clearly exactly
roughly approximately nearly almost always sometimes usually rather quite
really rotate rotation flip mirror crop paste resize shift move swap shuffle
permute invert blur sharpen brighten darken contrast saturate highlight
outline fill draw paint erase mask overlay blend merge split tile grid patch
piece quarter half whole copy original edited result output input function
parameter argument list dict tuple string integer float boolean return define
import class method module library program code script error exception valid
invalid check test verify render execute run compile parse format print write
read open save load create build apply transform convert compute measure
compare estimate predict propose solve generate sample train learn reward
score policy solver challenger proposer coder verifier teacher student group
batch token sequence length width height depth angle degree radian coordinate
position location distance direction orientation perspective geometry
triangle rectangle circle ellipse polygon hexagon pentagon cube sphere
cylinder cone pyramid vertex segment radius diameter circumference perimeter
volume slope intercept equation formula expression variable constant
probability statistics percentage fraction decimal multiply divide add
subtract plus minus times animal bird fish horse cow sheep elephant giraffe
zebra bear lion tiger monkey rabbit mouse person child woman girl boy player
crowd team family friend bicycle motorcycle airplane bus train truck boat
ship traffic signal sign bench bag umbrella suitcase ball kite skateboard
surfboard racket bowl cup fork knife spoon banana apple sandwich orange
broccoli carrot pizza donut cake couch bed toilet television laptop keyboard
phone microwave oven sink refrigerator book clock vase scissors teddy
toothbrush mountain river lake ocean beach forest field garden street building
bridge tower city village sky sun moon rain snow grass stone wood metal glass
paper plastic water fire user assistant system
""".split()))
_PIL_OPS = (
    "img = img.rotate({a}, expand=True, fillcolor=(255, 255, 255))",
    "img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)",
    "img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)",
    "img = img.transpose(Image.Transpose.ROTATE_90)",
    "img = img.crop((x0, y0, x1, y1))",
    "draw.rectangle([x0, y0, x1, y1], outline=color, width={n})",
    "draw.ellipse((x0, y0, x1, y1), fill=color)",
    "draw.line([(x0, y0), (x1, y1)], fill=color, width={n})",
    "draw.text((x0, y0), text, fill=color)",
    "img.paste(patch, (x0, y0))",
    "patch = img.crop((x0, y0, x0 + w // 2, y0 + h // 2))",
    "img = ImageOps.grayscale(img).convert(\"RGB\")",
    "img = ImageOps.invert(img)",
    "img = ImageOps.mirror(img)",
    "img = img.filter(ImageFilter.GaussianBlur(radius={n}))",
    "img = ImageEnhance.Brightness(img).enhance({f})",
    "img = ImageEnhance.Contrast(img).enhance({f})",
    "img = img.resize((w // {n}, h // {n}), Image.Resampling.BICUBIC)",
    "tiles = [img.crop(box) for box in boxes]",
    "out = Image.new(\"RGB\", (w, h), (0, 0, 0))",
    "arr = np.asarray(img, dtype=np.float32) / 255.0",
    "img = Image.fromarray((arr * 255).clip(0, 255).astype(np.uint8))",
)
_PARAMS = ("angle", "box", "color", "order", "factor", "radius", "scale",
           "x", "y", "width", "height", "text", "k", "shift")


def _number(rng: random.Random) -> str:
  kind = rng.randrange(5)
  if kind == 0:
    return str(rng.randrange(10))
  if kind == 1:
    return str(rng.randrange(1000))
  if kind == 2:
    return f"{rng.uniform(0, 100):.{rng.randrange(1, 4)}f}"
  if kind == 3:
    return str(rng.randrange(1990, 2030))
  return f"{rng.randrange(100)}%"


def _fill(rng: random.Random, template: str) -> str:
  """Replaces {o}, {c}, ... slots; other braces (\\boxed{}) stay as they are."""
  values = {
      "o": lambda: rng.choice(_OBJECTS), "o2": lambda: rng.choice(_OBJECTS),
      "c": lambda: rng.choice(_COLORS), "w": lambda: rng.choice(_WHERE),
      "p": lambda: rng.choice(_PARAMS) + "=" + _number(rng),
      "a": lambda: str(rng.choice((15, 30, 45, 90, 135, 180, 270))),
      "n": lambda: str(rng.randrange(1, 9)),
      "f": lambda: f"{rng.uniform(0.2, 2.0):.1f}",
  }
  return re.sub(r"\{(o2|[ocwpanf])\}", lambda m: values[m.group(1)](),
                template)


def _program(rng: random.Random) -> str:
  params = rng.sample(_PARAMS, rng.randrange(1, 4))
  sig = ", ".join(params)
  lines = ["from PIL import Image, ImageDraw, ImageOps, ImageFilter, "
           "ImageEnhance", "import numpy as np", "",
           f"def edit_image(img, {sig}):",
           "    img = img.copy()", "    w, h = img.size",
           "    draw = ImageDraw.Draw(img)",
           "    x0, y0, x1, y1 = box" if "box" in params else
           f"    x0, y0, x1, y1 = 0, 0, w // {rng.randrange(2, 5)}, h // 2"]
  for _ in range(rng.randrange(2, 6)):
    op = _fill(rng, rng.choice(_PIL_OPS))
    if rng.random() < 0.3:
      lines.append(f"    if {rng.choice(params)} > {_number(rng)}:")
      lines.append("        " + op)
    else:
      lines.append("    " + op)
  lines.append("    return img")
  lines.append("")
  lines.append("args_list = [")
  for _ in range(4):
    items = []
    for p in params:
      if p == "box":
        v = "[" + ", ".join(str(rng.randrange(0, 640)) for _ in range(4)) + "]"
      elif p == "color":
        v = "(" + ", ".join(str(rng.randrange(256)) for _ in range(3)) + ")"
      elif p == "text":
        v = repr(rng.choice(_OBJECTS))
      elif p == "order":
        v = str(rng.sample(range(4), 4))
      else:
        v = _number(rng).rstrip("%")
      items.append(f"\"{p}\": {v}")
    lines.append("    {" + ", ".join(items) + "},")
  lines.append("]")
  return "\n".join(lines)


def _svg(rng: random.Random) -> str:
  w, h = rng.choice(((400, 300), (640, 480), (512, 512)))
  parts = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" "
           f"height=\"{h}\" viewBox=\"0 0 {w} {h}\">"]
  for _ in range(rng.randrange(2, 7)):
    c = rng.choice(_COLORS)
    kind = rng.randrange(3)
    if kind == 0:
      parts.append(f"  <rect x=\"{rng.randrange(w)}\" y=\"{rng.randrange(h)}\""
                   f" width=\"{rng.randrange(10, 200)}\" height="
                   f"\"{rng.randrange(10, 200)}\" fill=\"{c}\"/>")
    elif kind == 1:
      parts.append(f"  <circle cx=\"{rng.randrange(w)}\" cy=\"{rng.randrange(h)}"
                   f"\" r=\"{rng.randrange(5, 80)}\" fill=\"{c}\"/>")
    else:
      parts.append(f"  <text x=\"{rng.randrange(w)}\" y=\"{rng.randrange(h)}\" "
                   f"font-size=\"{rng.randrange(10, 30)}\">"
                   f"{rng.choice(_OBJECTS)} {_number(rng)}</text>")
  parts.append("</svg>")
  return "\n".join(parts)


def _reasoning(rng: random.Random) -> str:
  steps = []
  for _ in range(rng.randrange(1, 5)):
    steps.append(rng.choice((
        "First, I look at the {c} {o} in the {w}.",
        "The {o} appears {n} times, so the count is {n}.",
        "Option {L} matches because the {o} moved to the {w}.",
        "Comparing the values, {x} is larger than {y}.",
        "Wait, let me check the {o} again.",
        "So the answer should be {L}.",
    )).format(c=rng.choice(_COLORS), o=rng.choice(_OBJECTS),
              w=rng.choice(_WHERE), n=rng.randrange(1, 10),
              L=rng.choice("ABCD"), x=_number(rng), y=_number(rng)))
  return " ".join(steps)


def _prose(rng: random.Random) -> str:
  """A few sentences of random words: frequent English pieces for merges."""
  sentences = []
  for _ in range(rng.randrange(2, 6)):
    words = [rng.choice(_WORDS) for _ in range(rng.randrange(4, 14))]
    if rng.random() < 0.3:
      words.insert(rng.randrange(len(words)), _number(rng))
    sentence = " ".join(words)
    sentences.append(sentence[0].upper() + sentence[1:] +
                     rng.choice((".", ".", ".", "?", "!", ":", ";", ",")))
  return " ".join(sentences)


def _tag_value(rng: random.Random, tag: str) -> str:
  if "question" in tag:
    return _fill(rng, rng.choice(_QUESTIONS))
  if "answer" in tag:
    return _number(rng)
  return rng.choice(_OBJECTS)


def _document(rng: random.Random) -> str:
  """One corpus document: a prompt, a reply, or a program, built from parts."""
  kind = rng.randrange(8)
  if kind == 0:  # Solver prompt with options and a boxed answer.
    q = _fill(rng, rng.choice(_QUESTIONS))
    opts = "\n".join(f"{L}. {_fill(rng, '{c} {o}')} {_number(rng)}"
                     for L in "ABCD")
    return (f"{rng.choice(_INSTRUCTIONS)}\n{q}\n{opts}\n<think>\n"
            f"{_reasoning(rng)}\n</think>\n\\boxed{{{rng.choice('ABCD')}}}")
  if kind == 1:  # Challenger reply: a think block and a python fence.
    return (f"<think>\n{_reasoning(rng)}\n</think>\n\n```python\n"
            f"{_program(rng)}\n```")
  if kind == 2:  # Coder reply.
    return (f"{rng.choice(_INSTRUCTIONS)}\n```svg\n{_svg(rng)}\n```")
  if kind == 3:  # Proposer reply with tags.
    return "\n".join(f"<{t}>{_tag_value(rng, t)}</{t}>" for t in
                     rng.sample(_TAGS, rng.randrange(2, len(_TAGS))))
  if kind == 4:  # Numbers, tables and math.
    rows = [" | ".join(_number(rng) for _ in range(4))
            for _ in range(rng.randrange(2, 6))]
    return ("| a | b | c | d |\n|---|---|---|---|\n" +
            "\n".join(f"| {r} |" for r in rows) +
            f"\nThe total is \\boxed{{{_number(rng)}}}.")
  if kind == 5:  # Prompt sentences.
    return " ".join(_fill(rng, rng.choice(_QUESTIONS + _INSTRUCTIONS))
                    for _ in range(rng.randrange(2, 6)))
  return _prose(rng)


def _chat(rng: random.Random, doc: str) -> str:
  """Wraps a document in the chat format, so role names become tokens."""
  return (f"<|im_start|>system\n{_INSTRUCTIONS[0]}<|im_end|>\n"
          f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
          f"{_fill(rng, rng.choice(_QUESTIONS))}<|im_end|>\n"
          f"<|im_start|>assistant\n{doc}<|im_end|>\n")


def corpus(num_docs: int = _CORPUS_DOCS, seed: int = _SEED) -> list[str]:
  rng = random.Random(seed)
  docs = [_document(rng) for _ in range(num_docs)]
  return [_chat(rng, d) if rng.random() < 0.3 else d for d in docs]


def build() -> tokenizers.Tokenizer:
  """Trains the tokenizer; same result on every run and machine."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(SPLIT_PATTERN),
                           behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=VOCAB_SIZE - len(THINK_TOKENS),
      min_frequency=2,
      special_tokens=list(presets.BUILTIN_SPECIAL_TOKENS),
      initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
      show_progress=False)
  tok.train_from_iterator(corpus(), trainer=trainer)
  tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                  for t in THINK_TOKENS])
  size = tok.get_vocab_size(with_added_tokens=True)
  if size != VOCAB_SIZE:
    raise RuntimeError(f"Built tokenizer has {size} ids, expected {VOCAB_SIZE};"
                       " the corpus is too small for the requested merges.")
  return tok


def write(path: str) -> str:
  """Builds and writes the tokenizer JSON to `path` atomically; returns path."""
  text = build().to_str(pretty=True) + "\n"
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)
  os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a shipped asset.
  os.replace(tmp, path)
  return path


def main(argv):
  del argv
  print(write(flags.FLAGS.out))


if __name__ == "__main__":
  # Defined here, not at import, so importing `build`/`write` (tests) adds no
  # global flag that could clash with another program's.
  flags.DEFINE_string("out", DEFAULT_OUT, "Where to write the JSON file.")
  app.run(main)
