"""A multilingual Whisper model with random weights, small enough to build in a test (about 0.6 MB).

It speaks noise, but it has everything faster-whisper and CTranslate2 look for in a real model: Whisper's special
tokens in Whisper's order (end of text, start of transcript, the languages, the task tokens, no-timestamps, then the
1501 timestamps), language ids, alignment heads for word timestamps, and a byte-level BPE tokenizer trained here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
from ctranslate2.specs import whisper_spec
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

#: Whisper's languages in the order of their tokens (openai/whisper's LANGUAGES, before large-v3 added "yue").
LANGUAGES = (  # noqa: SIM905 (a list of 99 codes, one per line, is harder to check against Whisper's)
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr "
    "bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn "
    "yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su"
).split()
TASK_TOKENS = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>")
TIMESTAMPS = 1501  # <|0.00|> to <|30.00|>
N_MELS = 80
ENCODER_POSITIONS = 1500
DECODER_POSITIONS = 448
CORPUS = [
    "the witness saw two men leave the car near the river",
    "le témoin a vu deux hommes quitter la voiture près de la rivière",
    "der zeuge sah zwei männer das auto am fluss verlassen",
]


def special_tokens() -> list[str]:
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in LANGUAGES),
        *TASK_TOKENS,
        "<|notimestamps|>",
        *("<|%.2f|>" % (i * 0.02) for i in range(TIMESTAMPS)),
    ]


def build_tokenizer() -> Tokenizer:
    """A byte-level BPE trained on a few sentences, then Whisper's special tokens after the text tokens.

    The last text token is the empty string: CTranslate2 (4.7 and later) takes a Whisper model for multilingual only
    when its vocabulary holds one, as the vocabularies of OpenAI's multilingual models do.
    """
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trained.train_from_iterator(CORPUS * 4, trainer)
    spec = json.loads(trained.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    vocab[""] = len(vocab)
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens()])
    return tokenizer


def build_model(out: Path, *, width: int = 32, heads: int = 2, layers: int = 1, seed: int = 0) -> Path:
    """Write a CTranslate2 Whisper model (model.bin, config.json, vocabulary.json, tokenizer.json) to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocabulary = [tokenizer.id_to_token(i) or "" for i in range(tokenizer.get_vocab_size())]
    ids = {token: i for i, token in enumerate(vocabulary)}
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def layer_norm(spec: whisper_spec.common_spec.LayerNormSpec) -> None:
        spec.gamma = np.ones(width, np.float32)
        spec.beta = np.zeros(width, np.float32)

    def linear(spec: whisper_spec.common_spec.LinearSpec, outputs: int, inputs: int) -> None:
        spec.weight = weights(outputs, inputs)
        spec.bias = weights(outputs)

    def feed_forward(spec: whisper_spec.transformer_spec.FeedForwardSpec) -> None:
        layer_norm(spec.layer_norm)
        linear(spec.linear_0, 2 * width, width)
        linear(spec.linear_1, width, 2 * width)

    spec = whisper_spec.WhisperSpec(layers, heads, layers, heads)
    encoder = spec.encoder
    encoder.conv1.weight, encoder.conv1.bias = weights(width, N_MELS, 3), weights(width)
    encoder.conv2.weight, encoder.conv2.bias = weights(width, width, 3), weights(width)
    encoder.position_encodings.encodings = weights(ENCODER_POSITIONS, width)
    layer_norm(encoder.layer_norm)
    for layer in encoder.layer:
        layer_norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * width, width)  # fused query, key, value
        linear(layer.self_attention.linear[1], width, width)
        feed_forward(layer.ffn)
    decoder = spec.decoder
    decoder.embeddings.weight = weights(len(vocabulary), width)
    decoder.projection.weight = decoder.embeddings.weight  # tied, as in Whisper; saved once
    decoder.position_encodings.encodings = weights(DECODER_POSITIONS, width)
    layer_norm(decoder.layer_norm)
    for layer in decoder.layer:
        layer_norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * width, width)
        linear(layer.self_attention.linear[1], width, width)
        layer_norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], width, width)  # query
        linear(layer.attention.linear[1], 2 * width, width)  # fused key, value over the audio
        linear(layer.attention.linear[2], width, width)
        feed_forward(layer.ffn)

    spec.register_vocabulary(vocabulary)
    spec.config.lang_ids = [ids[f"<|{code}|>"] for code in LANGUAGES]
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [ids["<|endoftext|>"]]
    spec.config.alignment_heads = [(layers - 1, head) for head in range(heads)]
    spec.validate()
    spec.optimize(quantization="float16")
    spec.save(str(out))
    tokenizer.save(str(out / "tokenizer.json"))
    return out
