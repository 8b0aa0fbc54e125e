"""Conformer-RNNT speech recognition: prediction net, joint, Transducer, streaming transcriber.

    audio [B, S] 16 kHz --LogMel--> [B, 80, T_feat] --ConformerEncoder--> f [B, T, D]
    tokens [B, U] --PredictionNet (Embedding + LSTM)--> g [B, U + 1, H]
    Joint: Linear(f) + Linear(g) -> ReLU -> Linear -> logits [B, T, U + 1, V + 1]

An RNN-T (Graves 2012, "Sequence transduction with recurrent neural networks") emits, at
each encoder frame, tokens until it emits blank. Token ids 0..V-1 come from the
sentencepiece tokenizer (with `<EOU>` end-of-utterance and `<EOB>` end-of-backchannel
symbols); blank is V, the last joint output. Module names follow NeMo's RNNTDecoder and
RNNTJoint (`decoder.embed`, `joint.enc`, `joint.pred`, `joint.joint_net.2`).

`StreamingTranscriber` runs the model on a live stream: PCM chunks of any size ->
`StreamingFeatureBufferer` -> cache-aware encoder steps of one attention chunk (160 ms for
context [70, 1]) -> greedy decoding with a carried state -> `ASRResult` text deltas, with
`is_final` when `<EOU>` (or `<EOB>`) is emitted. Its results do not depend on how the audio was chunked,
and equal offline `Transducer.transcribe` (tests check both).

Shape letters: B batch, S samples, T encoder frames, U target tokens, V vocabulary (without
blank), D encoder width, H prediction-net width, J joint width, M mel bins.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minivox.audio import ASR_FEATURES, FeatureConfig, LogMel, StreamingFeatureBufferer
from minivox.checkpoint import load_checkpoint, load_state_dict, save_checkpoint
from minivox.config import from_dict, parse_override
from minivox.conformer import ConformerConfig, ConformerEncoder, EncoderState, subsampled_length
from minivox.decoding import (GreedyState, Hypothesis, greedy_batch, initial_greedy_state, modified_beam_search,
                              words_from_tokens)
from minivox.text import Tokenizer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EOU = "<EOU>"  # end of utterance: appended to every training transcript; ends a turn when emitted
EOB = "<EOB>"  # end of backchannel ("uh huh", "yeah"): a short acknowledgement that ends no turn
MAX_SYMBOLS_PER_STEP = 10  # tokens greedy search may emit at one 80 ms frame (NeMo's default)
SILENCE_RESET_S = 1.0  # an utterance with no new token for this long is over (after the 0.8 s VAD fallback)
PCM_ABS_LIMIT = 16.0  # float PCM beyond this is surely unscaled integer samples, not [-1, 1] audio
# Recordings longer than this many encoder frames (2 minutes) are encoded chunk by chunk with
# the streaming caches (the same frames): offline attention would build [T, T] score matrices
# per head (0.9 GB for 10 minutes at 4 heads), the streaming path only [T_block, left + T_block].
LONG_FORM_FRAMES = 1500
LONG_FORM_BLOCK = 250  # encoder frames per streaming call for long recordings (20 s)


# ---------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------


@dataclass
class PredictionConfig:
    """Prediction network (NeMo RNNTDecoder `prednet`)."""

    pred_hidden: int = 320  # embedding and LSTM width; NeMo FastConformer RNNT uses 640, small models less
    pred_rnn_layers: int = 1  # LSTM layers; one is NeMo's default for FastConformer
    dropout: float = 0.1  # on the embedding and the LSTM output during training


@dataclass
class JointConfig:
    """Joint network (NeMo RNNTJoint `jointnet`)."""

    joint_hidden: int = 320  # width where encoder and prediction projections are added
    dropout: float = 0.1  # before the output layer during training


@dataclass
class TokenizerConfig:
    """The sentencepiece tokenizer the model's output layer is sized for (trained with the model)."""

    vocab_size: int = 256  # ids including <unk>, <EOU>, <EOB>; the blank is one more output
    model_type: str = "unigram"  # "unigram" or "bpe" (sentencepiece)


@dataclass
class ASRConfig:
    """Everything that defines an ASR model; a checkpoint stores it and is rebuilt from it."""

    encoder: ConformerConfig = field(default_factory=ConformerConfig)
    decoder: PredictionConfig = field(default_factory=PredictionConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    features: FeatureConfig = field(default_factory=lambda: ASR_FEATURES)  # log-mel frontend (DESIGN §4)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # An auxiliary CTC output layer on the encoder (Linear(D, V + 1), blank last), as NeMo's hybrid
    # RNNT-CTC models and ESPnet's transducer recipes (aux CTC weight 0.3). A training aid: train/asr.py
    # adds `ctc_weight` x its CTC loss, which keeps the encoder acoustic (see `Transducer.forward`).
    ctc_head: bool = False

    def __post_init__(self):
        if self.features.n_mels != self.encoder.feat_in:
            raise ValueError(f"ASRConfig: features.n_mels ({self.features.n_mels}) must equal "
                             f"encoder.feat_in ({self.encoder.feat_in})")
        if self.tokenizer.vocab_size < 4:
            raise ValueError(f"ASRConfig: tokenizer.vocab_size must be >= 4, got {self.tokenizer.vocab_size}")

    @property
    def frame_seconds(self) -> float:
        """Duration of one encoder frame: hop * subsampling factor / rate (0.08 s)."""
        return self.features.hop_length * self.encoder.subsampling_factor / self.features.sample_rate


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> ASRConfig:
    """The `[model]` table of a preset (configs/asr_*.toml) as an ASRConfig.

    Other tables of the file (training, data) belong to the training recipe and are ignored
    here. Overrides are relative to the model: "encoder.n_layers=4".
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    model = data.get("model", {})
    for item in overrides:
        key, value = parse_override(item)
        *sections, last = key.split(".")
        node = model
        for name in sections:
            node = node.setdefault(name, {})
        node[last] = value
    try:
        return from_dict(ASRConfig, model, prefix="model.")
    except ValueError as exc:
        raise ValueError(f"{exc} (in {path})") from None


# ---------------------------------------------------------------------------------------
# Prediction network and joint.
# ---------------------------------------------------------------------------------------


class PredictionNet(nn.Module):
    """Embedding + LSTM over the tokens emitted so far. The blank id doubles as the start
    symbol and embeds to zeros (NeMo's `blank_as_pad`)."""

    def __init__(self, vocab_size: int, cfg: PredictionConfig):
        super().__init__()
        self.blank_id = vocab_size
        self.embed = nn.Embedding(vocab_size + 1, cfg.pred_hidden, padding_idx=vocab_size)
        self.dec_rnn = nn.LSTM(cfg.pred_hidden, cfg.pred_hidden, cfg.pred_rnn_layers, batch_first=True,
                               dropout=cfg.dropout if cfg.pred_rnn_layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)

    def initial_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state (h, c), each [layers, B, H]."""
        shape = (self.dec_rnn.num_layers, batch_size, self.dec_rnn.hidden_size)
        dtype = self.embed.weight.dtype
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def forward(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens [B, U] long (blank = start) -> (out [B, U, H], (h, c) each [layers, B, H])."""
        x = self.dropout(self.embed(tokens))  # [B, U, H]
        out, state = self.dec_rnn(x, state)  # [B, U, H]
        return self.dropout(out), state

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One token per row: tokens [B] -> (out [B, H], state)."""
        out, state = self.forward(tokens[:, None], state)  # [B, 1, H]
        return out[:, 0], state


class Joint(nn.Module):
    """logits = joint_net(enc(f) + pred(g)), joint_net = ReLU -> dropout -> Linear(J, V + 1)."""

    def __init__(self, enc_hidden: int, pred_hidden: int, vocab_size: int, cfg: JointConfig):
        super().__init__()
        self.blank_id = vocab_size
        self.enc = nn.Linear(enc_hidden, cfg.joint_hidden)
        self.pred = nn.Linear(pred_hidden, cfg.joint_hidden)
        self.joint_net = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.joint_hidden, vocab_size + 1))

    def project_encoder(self, f: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., J]"""
        return self.enc(f)

    def project_prednet(self, g: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., J]"""
        return self.pred(g)

    def joint_after_projection(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Projected f [..., J] + g [..., J] (broadcast) -> logits [..., V + 1]."""
        return self.joint_net(f + g)

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Every (frame, prefix) pair: f [B, T, D], g [B, U + 1, H] -> logits [B, T, U + 1, V + 1]."""
        return self.joint_after_projection(self.project_encoder(f)[:, :, None, :],
                                           self.project_prednet(g)[:, None, :, :])


# ---------------------------------------------------------------------------------------
# The transducer.
# ---------------------------------------------------------------------------------------


def _pcm_batch(audio, sample_rate: int, expected_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of 1-D float PCM arrays -> (padded [B, S] float32, lengths [B])."""
    if sample_rate != expected_rate:
        raise ValueError(f"expected audio at {expected_rate} Hz, got {sample_rate} Hz (resample it first, "
                         "e.g. with minivox.audio.resample)")
    if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 1:
        audio = [audio]
    items = [_validate_pcm(a) for a in audio]
    lengths = torch.tensor([len(a) for a in items], dtype=torch.long)
    batch = torch.zeros(len(items), int(lengths.max()) if items else 0)
    for i, a in enumerate(items):
        batch[i, :len(a)] = a
    return batch, lengths


def _validate_pcm(pcm) -> torch.Tensor:
    """Check one mono float32 PCM chunk in [-1, 1] and return it as a tensor [S]."""
    expected = "expected mono float32 PCM samples of shape [S] in [-1, 1] at 16 kHz"
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.float32:
            raise ValueError(f"{expected}, got a numpy array of dtype {pcm.dtype}"
                             + (" (divide int16 samples by 32768)" if pcm.dtype == np.int16 else ""))
        pcm = torch.from_numpy(np.ascontiguousarray(pcm))
    elif isinstance(pcm, torch.Tensor):
        if pcm.dtype != torch.float32:
            raise ValueError(f"{expected}, got a tensor of dtype {pcm.dtype}")
        pcm = pcm.detach().cpu()
    else:
        raise ValueError(f"{expected}, got {type(pcm).__name__}")
    if pcm.ndim != 1:
        raise ValueError(f"{expected}, got shape {tuple(pcm.shape)} (downmix multi-channel audio first)")
    if pcm.numel():
        if not bool(torch.isfinite(pcm).all()):
            raise ValueError(f"{expected}, got NaN or infinite samples")
        peak = float(pcm.abs().max())
        if peak > PCM_ABS_LIMIT:
            raise ValueError(f"{expected}, got samples up to {peak:g} (integer PCM? divide int16 samples by 32768)")
    return pcm


class Transducer(nn.Module):
    """The ASR model: features, encoder, prediction net, joint (+ the tokenizer it was trained with)."""

    def __init__(self, cfg: ASRConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        V = cfg.tokenizer.vocab_size
        self.preprocessor = LogMel(cfg.features)
        self.encoder = ConformerEncoder(cfg.encoder)
        self.decoder = PredictionNet(V, cfg.decoder)
        self.joint = Joint(cfg.encoder.d_model, cfg.decoder.pred_hidden, V, cfg.joint)
        self.ctc_decoder = nn.Linear(cfg.encoder.d_model, V + 1) if cfg.ctc_head else None  # blank = V
        self.tokenizer: Tokenizer | None = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    @property
    def blank_id(self) -> int:
        return self.cfg.tokenizer.vocab_size

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Attach the tokenizer whose ids the output layer predicts (its size must match)."""
        if tokenizer.vocab_size != self.cfg.tokenizer.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids, the model expects "
                             f"{self.cfg.tokenizer.vocab_size} (tokenizer.vocab_size)")
        self.tokenizer = tokenizer

    def set_att_context(self, att_context_size: tuple[int, int]) -> None:
        """Stream (and encode offline) with another [left, right] attention context from now on.

        Right = 0 answers one 80 ms frame sooner than right = 1 (no look-ahead); a model streams
        best with the contexts it was trained on: `cfg.encoder.att_context_size` and
        `cfg.encoder.train_att_contexts`. Set it before making transcribers (they share the model).
        Raises ValueError for a context that cannot stream."""
        size = tuple(int(v) for v in att_context_size)
        checked = replace(self.cfg.encoder, att_context_size=size)  # validates it (ConformerConfig)
        if checked.chunk_size == 0 or size[0] < 0:
            raise ValueError(f"a streaming attention context needs left >= 0 and right >= 0, got {list(size)}")
        self.cfg.encoder.att_context_size = size  # the encoder holds the same config object

    def special_ids(self) -> dict[str, int]:
        """Ids of `<EOU>` / `<EOB>` in the attached tokenizer (those it has)."""
        if self.tokenizer is None:
            return {}
        return {s: i for s, i in self.tokenizer.user_symbol_ids.items() if s in (EOU, EOB)}

    # ---- training and offline inference -----------------------------------------------

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """Auxiliary CTC head: encoder frames [B, T, D] -> log-probabilities [B, T, V + 1] (blank = V)."""
        if self.ctc_decoder is None:
            raise ValueError("this model has no CTC head (ASRConfig.ctc_head = false)")
        return self.ctc_decoder(enc).log_softmax(-1)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor, targets: torch.Tensor,
                target_lengths: torch.Tensor, with_ctc: bool = False, with_rnnt: bool = True):
        """RNN-T logits for a batch (what the loss reads).

        Why the auxiliary CTC head (`with_ctc`, measured in the demo runs): the RNN-T loss alone has an
        acoustics-free basin. The prediction net is a language model, and the encoder can supply a
        position "clock" from its causal padding and attention-window edges; that pair emits tokens at
        a plausible rate without listening. In that basin the input-dependent part of the encoder
        output is noise to the joint, so training removes it (each layer adds near-constant vectors
        that swamp its LayerNorm-ed residual; 8 layers took the cross-utterance difference from 0.5
        to 3e-5) and the gradient into the acoustic path vanishes. CTC has no language model to fall
        back on. As an auxiliary loss beside RNN-T it was not enough in the demo runs; what made the
        encoder listen was a CTC-only start (`with_rnnt=False`, train.ctc_only_steps) with SkipInit
        (`ConformerLayer.reset_parameters`); MODEL_CARD.md has the runs.

        Decoding restarts the prediction net after `<EOU>` / `<EOB>` (`StreamingTranscriber`,
        `transcribe`), so the frames after one are read from the start symbol's state. Training
        sees the same: for a target that ends in one of them (with the tokenizer attached), the
        last prefix (u = U_b, after the end symbol) uses the start symbol's prediction output.
        Without this the joint never learns the start state on post-utterance frames, and a
        restarted search hallucinates tokens there.

        Args:
            feats: [B, M, T_feat] log-mel features; feat_lengths [B].
            targets: [B, U] token ids (anything beyond target_lengths [B] is ignored).
            with_ctc: also return the CTC head's log-probabilities [B, T, V + 1].
            with_rnnt: False skips the prediction net and joint (CTC-only training steps); logits is None.
        Returns:
            (logits [B, T, U + 1, V + 1], encoded lengths [B]) or, with_ctc, (logits, lengths, ctc log-probs)
        """
        if targets.ndim != 2 or target_lengths.shape != (targets.shape[0],):
            raise ValueError(f"expected targets [B, U] and target_lengths [B], got {tuple(targets.shape)} "
                             f"and {tuple(target_lengths.shape)}")
        enc, enc_lengths = self.encoder(feats, feat_lengths)  # [B, T, D]
        if not with_rnnt:
            if not with_ctc:
                raise ValueError("with_rnnt=False needs with_ctc=True (nothing to return otherwise)")
            return None, enc_lengths, self.ctc_log_probs(enc)
        U = targets.shape[1]
        in_target = torch.arange(U, device=targets.device)[None, :] < target_lengths[:, None]  # [B, U]
        tokens = torch.where(in_target, targets, self.blank_id)  # padding reads as blank (zero embedding)
        start = torch.full_like(tokens[:, :1], self.blank_id)
        g, _ = self.decoder(torch.cat([start, tokens], dim=1))  # [B, U + 1, H]
        reset_ids = self._reset_ids()
        if reset_ids:
            last = targets.gather(1, (target_lengths - 1).clamp_min(0)[:, None])[:, 0]  # [B] each row's last token
            ends = (target_lengths > 0) & torch.isin(last, torch.tensor(reset_ids, device=targets.device))  # [B]
            after_end = ends[:, None] & (torch.arange(U + 1, device=targets.device)[None, :] == target_lengths[:, None])
            g = torch.where(after_end[:, :, None], g[:, :1], g)  # [B, U + 1, H]: the restarted state
        if with_ctc:
            return self.joint(enc, g), enc_lengths, self.ctc_log_probs(enc)
        return self.joint(enc, g), enc_lengths

    @torch.no_grad()
    def encode_audio(self, audio, sample_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
        """PCM (one 1-D float32 array or a list of them) -> (encoded [B, T, D], lengths [B]).

        Long recordings (> LONG_FORM_FRAMES) are encoded one at a time in streaming blocks,
        which gives the same frames in bounded memory."""
        pcm, lengths = _pcm_batch(audio, sample_rate, self.cfg.features.sample_rate)
        device = next(self.parameters()).device
        feats, feat_lengths = self.preprocessor(pcm.to(device), lengths.to(device))
        enc_lengths = subsampled_length(feat_lengths, self.cfg.encoder.subsampling_factor)
        streamable = self.cfg.encoder.chunk_size > 0 and self.cfg.encoder.att_context_size[0] >= 0
        if not streamable or not len(feats) or int(enc_lengths.max()) <= LONG_FORM_FRAMES:
            return self.encoder(feats, feat_lengths)
        enc = feats.new_zeros(len(feats), int(enc_lengths.max()), self.cfg.encoder.d_model)
        for b, n in enumerate(feat_lengths.tolist()):
            enc[b, :enc_lengths[b]] = self._encode_in_blocks(feats[b:b + 1, :, :n])[0]
        return enc, enc_lengths

    def _encode_in_blocks(self, feats: torch.Tensor) -> torch.Tensor:
        """One recording [1, M, T_feat] through `stream_step`, LONG_FORM_BLOCK frames per call."""
        encoder = self.encoder
        block = LONG_FORM_BLOCK - LONG_FORM_BLOCK % encoder.cfg.chunk_size  # whole attention chunks
        state, outputs, fed = encoder.initial_state(1, feats.device, feats.dtype), [], 0
        while True:
            target = encoder.feature_frames_for(state.frames_out + block)
            last = target >= feats.shape[2]
            out, state = encoder.stream_step(feats[:, :, fed:target], state, last=last)
            outputs.append(out)
            fed = target
            if last:
                return torch.cat(outputs, dim=1)  # [1, T, D]

    def _finish(self, hyp: Hypothesis) -> Hypothesis:
        """Fill in `text` and `words` from the tokenizer (special symbols left out of both)."""
        tok = self.tokenizer
        special = set(self.special_ids().values())
        keep = [i for i, y in enumerate(hyp.y_sequence) if y not in special]
        hyp.text = tok.decode([hyp.y_sequence[i] for i in keep])
        hyp.words = words_from_tokens([tok.id_to_piece(hyp.y_sequence[i]) for i in keep],
                                      [hyp.timestamps[i] for i in keep], self.cfg.frame_seconds)
        return hyp

    @torch.no_grad()
    def transcribe(self, audio, sample_rate: int = 16000, beam_size: int = 1,
                   max_symbols_per_step: int = MAX_SYMBOLS_PER_STEP,
                   silence_reset_s: float | None = SILENCE_RESET_S, batch_size: int = 8) -> list[Hypothesis]:
        """Offline transcription of whole recordings.

        Args:
            audio: one mono float32 array [S] or a list of them, at `sample_rate` (16 kHz).
            beam_size: 1 = greedy search (with the streaming transcriber's restarts after
                `<EOU>` / `<EOB>` and silences, so it gives the same text); > 1 = modified beam
                search (no restarts).
            silence_reset_s: greedy only; see `StreamingTranscriber`.
            batch_size: recordings encoded together.
        Returns:
            One hypothesis per recording, with `text`, token `timestamps` (encoder frames,
            `cfg.frame_seconds` each) and `words`. `<EOU>` / `<EOB>` stay in `y_sequence`.
        """
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer attached (Transducer(cfg, tokenizer) or from_checkpoint)")
        if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 1:
            audio = [audio]
        was_training = self.training
        self.eval()
        hyps = []
        try:
            for first in range(0, len(audio), batch_size):
                enc, enc_lengths = self.encode_audio(audio[first:first + batch_size], sample_rate)
                if beam_size == 1:
                    hyps += greedy_batch(self.decoder, self.joint, enc, enc_lengths, max_symbols_per_step,
                                         reset_ids=self._reset_ids(),
                                         reset_after_blank_frames=self._silence_frames(silence_reset_s)).hyps
                else:
                    hyps += [modified_beam_search(self.decoder, self.joint, enc[b, :enc_lengths[b]], beam_size)[0]
                             for b in range(enc.shape[0])]
        finally:
            self.train(was_training)
        return [self._finish(h) for h in hyps]

    def _reset_ids(self) -> list[int]:
        """Tokens that end an utterance: the prediction net restarts after them, as every
        training transcript starts from the start symbol."""
        return sorted(self.special_ids().values())

    def _silence_frames(self, seconds: float | None) -> int | None:
        return None if seconds is None else max(1, round(seconds / self.cfg.frame_seconds))

    # ---- checkpoints ------------------------------------------------------------------

    def save(self, path: str | Path, meta: dict | None = None, fp16: bool = False) -> Path:
        """Write a kind "asr" checkpoint with the config, weights and tokenizer."""
        tokenizer = None if self.tokenizer is None else self.tokenizer.to_bytes()
        return save_checkpoint(path, "asr", self.cfg, self, tokenizer=tokenizer, meta=meta, fp16=fp16)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Transducer:
        """Rebuild a model saved by `save` (in eval mode, with its tokenizer)."""
        payload = load_checkpoint(path, kind="asr", map_location=map_location)
        cfg = from_dict(ASRConfig, payload["config"])
        tokenizer = Tokenizer.from_bytes(payload["tokenizer"]) if payload["tokenizer"] is not None else None
        model = cls(cfg, tokenizer)
        load_state_dict(model, payload["model"], source=str(path))
        model.meta = payload["meta"]
        return model.to(map_location).eval()


# ---------------------------------------------------------------------------------------
# Streaming.
# ---------------------------------------------------------------------------------------


@dataclass
class ASRResult:
    """One streaming result (DESIGN §3): the text added since the previous result."""

    text: str  # the delta: new text of the current utterance since the last result
    is_final: bool  # the utterance ended here: <EOU> (eou_latency set), <EOB> (a backchannel such as
    #   "uh huh" ended: eob_latency set, not a turn end), a silence timeout or the end of the stream
    eou_prob: float  # largest softmax probability of <EOU> over this result's frames
    eob_prob: float  # the same for <EOB>
    eou_latency: float | None = None  # s from the end of the utterance's last word to this result, if <EOU> ended it
    eob_latency: float | None = None  # the same when <EOB> was emitted in this result
    processing_time: float = 0.0  # s of compute (encoder + decoding) spent on this result
    audio_time: float = 0.0  # s of audio this result accounts for (end of the input its frames read)


@dataclass
class TranscriberState:
    """Everything a `StreamingTranscriber` carries between `step` calls."""

    features: StreamingFeatureBufferer  # PCM -> log-mel frames, with its own sample buffer
    pending: torch.Tensor  # [M, n] feature frames received but not yet encoded
    encoder: EncoderState  # caches of the cache-aware encoder
    decoder: GreedyState  # greedy search state; decoder.hyps[0] holds every token of the stream
    samples: int = 0  # PCM samples received
    utterance_start: int = 0  # index in y_sequence where the current utterance begins
    restarts_seen: int = 0  # entries of decoder.restarts[0] already turned into final results
    sent_text: str = ""  # text of the current utterance already sent as deltas


class StreamingTranscriber:
    """Live transcription: `step(pcm)` with any chunk size -> results for each encoder chunk.

        transcriber = StreamingTranscriber(Transducer.from_checkpoint(path))
        for chunk in chunks:                       # float32 [S] at 16 kHz, any length
            for result in transcriber.step(chunk):
                print(result.text, end="", flush=True)
                if result.is_final: print()
        transcriber.flush()                        # end of stream

    One result per encoder chunk (`chunk_frames` frames: 160 ms for context [70, 1]); a chunk
    where an utterance ends gives a final result for it and, if frames remain, a result for
    the next utterance. An utterance ends when `<EOU>` or `<EOB>` is emitted, after
    `silence_reset_s` seconds without a token, and at `flush`; then the prediction net restarts, so a stale
    partial never continues into the next utterance. The results (all but processing_time)
    do not depend on how the audio is chunked.
    """

    def __init__(self, model: Transducer, tokenizer: Tokenizer | None = None, *,
                 chunk_frames: int | None = None, max_symbols_per_step: int = MAX_SYMBOLS_PER_STEP,
                 silence_reset_s: float | None = SILENCE_RESET_S, eou_threshold: float | None = None):
        """
        Args:
            model: the transducer (put in eval mode here).
            tokenizer: defaults to the model's.
            chunk_frames: encoder frames per step, a multiple of the attention chunk
                (default: one chunk, right + 1 frames); larger is cheaper per second, later.
            max_symbols_per_step: greedy search's limit of tokens per frame.
            silence_reset_s: end the utterance after this many seconds without a token (None: never).
            eou_threshold: end the utterance at the first frame where `<EOU>` has at least this
                probability (None: only where it is the most likely output, plain greedy). The
                model grows sure of an end over ~100-200 ms of silence; a threshold ends turns
                sooner at some risk of ending one in a pause (README: the agent's latency).
        """
        self.model = model.eval()
        if tokenizer is not None:
            model.set_tokenizer(tokenizer)
        if model.tokenizer is None:
            raise ValueError("StreamingTranscriber needs a tokenizer (pass one, or attach it to the model)")
        self.tokenizer = model.tokenizer
        cfg = model.cfg.encoder
        if cfg.chunk_size == 0 or cfg.att_context_size[0] < 0:
            raise ValueError(f"streaming needs a limited attention context, got att_context_size={cfg.att_context_size}")
        self.chunk_frames = chunk_frames or cfg.chunk_size
        if self.chunk_frames % cfg.chunk_size:
            raise ValueError(f"chunk_frames must be a multiple of the attention chunk ({cfg.chunk_size}), "
                             f"got {self.chunk_frames}")
        self.max_symbols_per_step = max_symbols_per_step
        self.silence_frames = model._silence_frames(silence_reset_s)
        ids = model.special_ids()
        self.eou_id, self.eob_id = ids.get(EOU), ids.get(EOB)
        if eou_threshold is not None and not 0 < eou_threshold <= 1:
            raise ValueError(f"eou_threshold must be a probability in (0, 1], got {eou_threshold!r}")
        self.emit_thresholds = {self.eou_id: eou_threshold} if eou_threshold and self.eou_id is not None else {}
        self.special = {i for i in (self.eou_id, self.eob_id) if i is not None}
        # Probabilities reported per result; a symbol the tokenizer lacks reads the blank's column (unused).
        self.track_ids = [i if i is not None else model.blank_id for i in (self.eou_id, self.eob_id)]
        self.sample_rate = model.cfg.features.sample_rate
        self.state = self.initial_state()
        self.stream_hypothesis: Hypothesis | None = None  # the last finished stream (set by `flush`)

    def initial_state(self) -> TranscriberState:
        model = self.model
        device = next(model.parameters()).device
        return TranscriberState(
            features=StreamingFeatureBufferer(model.cfg.features),
            pending=torch.zeros(model.cfg.features.n_mels, 0),
            encoder=model.encoder.initial_state(1, device),
            decoder=initial_greedy_state(model.decoder, model.joint, 1, device),
        )

    def reset(self) -> None:
        """Forget the stream (start a new one)."""
        self.state = self.initial_state()

    @torch.no_grad()
    def step(self, pcm_chunk, sample_rate: int = 16000) -> list[ASRResult]:
        """Feed the next PCM samples; get the results of every encoder chunk they complete.

        Args:
            pcm_chunk: float32 [S] mono samples in [-1, 1] (numpy or torch; any S >= 0).
            sample_rate: must be the model's (16000).
        Raises:
            ValueError: wrong dtype, shape, rate, or non-finite / unscaled samples.
        """
        if sample_rate != self.sample_rate:
            raise ValueError(f"expected mono float32 PCM at {self.sample_rate} Hz, got {sample_rate} Hz "
                             "(resample first, e.g. minivox.audio.Resampler)")
        pcm = _validate_pcm(pcm_chunk)
        st = self.state
        st.samples += pcm.numel()
        st.pending = torch.cat([st.pending, st.features.push(pcm)], dim=1)
        return self._run(last=False)

    @torch.no_grad()
    def flush(self) -> list[ASRResult]:
        """End the stream: encode what is left, end the utterance, reset. Returns the last results.

        Afterwards `stream_hypothesis` holds the finished stream's tokens with their frames
        (`text`, `words`), e.g. for word timestamps of a transcribed file."""
        st = self.state
        st.pending = torch.cat([st.pending, st.features.flush()], dim=1)
        results = self._run(last=True)
        if st.sent_text or len(st.decoder.hyps[0].y_sequence) > st.utterance_start:
            results.append(ASRResult("", True, 0.0, 0.0, audio_time=self._audio_time()))
        self.stream_hypothesis = self.model._finish(st.decoder.hyps[0])
        self.reset()
        return results

    # ---- internals ----------------------------------------------------------------------

    def _run(self, last: bool) -> list[ASRResult]:
        """Encode and decode every complete chunk of `pending` (and the remainder if `last`)."""
        st, encoder = self.state, self.model.encoder
        results = []
        while True:
            need = encoder.feature_frames_for(st.encoder.frames_out + self.chunk_frames) - st.encoder.frames_in
            if need > st.pending.shape[1]:
                if not last or st.pending.shape[1] == 0:
                    return results
                need = st.pending.shape[1]  # the stream's last, partial chunk
            started = time.perf_counter()
            feats, st.pending = st.pending[:, :need], st.pending[:, need:]
            enc, st.encoder = encoder.stream_step(feats[None].to(st.encoder.cache_pre_encode.device), st.encoder,
                                                  last=last and st.pending.shape[1] == 0)  # [1, T, D]
            first_frame = st.decoder.frame_offset
            st.decoder = greedy_batch(
                self.model.decoder, self.model.joint, enc, torch.tensor([enc.shape[1]], device=enc.device),
                self.max_symbols_per_step,
                state=st.decoder, reset_ids=self.model._reset_ids(),
                reset_after_blank_frames=self.silence_frames, track_ids=self.track_ids,
                emit_thresholds=self.emit_thresholds)
            chunk_results = self._results(first_frame)
            if chunk_results:
                chunk_results[-1].processing_time = time.perf_counter() - started
            results += chunk_results

    def _audio_time(self) -> float:
        """Seconds of audio the encoder has read: to the end of its last feature frame's window
        (or of the signal, at the end of the stream)."""
        cfg = self.model.cfg.features
        frames = self.state.encoder.frames_in
        window_end = (frames - 1) * cfg.hop_length + cfg.win_length - cfg.win_length // 2 if frames else 0
        return min(window_end, self.state.samples) / cfg.sample_rate

    def _last_word_end(self, start: int, end: int) -> float | None:
        """End time (s) of the last text token among tokens start..end-1 of the stream."""
        hyp = self.state.decoder.hyps[0]
        for i in range(end - 1, start - 1, -1):
            if hyp.y_sequence[i] not in self.special:
                return (hyp.timestamps[i] + 1) * self.model.cfg.frame_seconds
        return None

    def _results(self, first_frame: int) -> list[ASRResult]:
        """Results for the frames first_frame.. just decoded: one per utterance they touch."""
        st = self.state
        hyp = st.decoder.hyps[0]
        probs = st.decoder.token_probs[0]  # [T, 2] per frame: probability of <EOU>, <EOB>
        audio_time = self._audio_time()
        results = []
        frame_from = first_frame
        ends = st.decoder.restarts[0][st.restarts_seen:] + [(len(hyp.y_sequence), None)]
        for tokens_end, frame in ends:  # each restart ends an utterance; then the open one
            final = frame is not None
            last_frame = frame if final else first_frame + probs.shape[0] - 1
            if not final and last_frame < frame_from:
                break  # the last restart was at the chunk's last frame: nothing is open yet
            tokens = hyp.y_sequence[st.utterance_start:tokens_end]
            text = self.tokenizer.decode([t for t in tokens if t not in self.special])
            frames = probs[max(0, frame_from - first_frame):last_frame - first_frame + 1]  # [n, 2]
            top = frames.max(dim=0).values if len(frames) else torch.zeros(2)
            word_end = self._last_word_end(st.utterance_start, tokens_end)
            latency = {}
            for name, token in (("eou_latency", self.eou_id), ("eob_latency", self.eob_id)):
                if token is not None and word_end is not None and any(
                        y == token and t >= frame_from for y, t in zip(tokens, hyp.timestamps[st.utterance_start:])):
                    latency[name] = audio_time - word_end
            results.append(ASRResult(text[len(st.sent_text):], final, float(top[0]), float(top[1]),
                                     audio_time=audio_time, **latency))
            if final:
                st.utterance_start, st.sent_text, st.restarts_seen = tokens_end, "", st.restarts_seen + 1
                frame_from = frame + 1
            else:
                st.sent_text = text
        return results
