"""Stub of HF tokenizers (see ../README.md): byte tokens, no merges."""
import json
import sys
import types

__version__ = "0.0-stub"
_HERE = __name__


def _corpus():
    sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
    import corpus
    return corpus


class Encoding:
    def __init__(self, ids):
        self.ids = ids


class Tokenizer:
    def __init__(self, model):
        self.model = model
        self.normalizer = self.pre_tokenizer = self.decoder = self.post_processor = None
        self._bt = None

    def train_from_iterator(self, iterator, trainer=None, length=None):
        assert isinstance(trainer, trainers.BpeTrainer), trainer
        assert trainer.kw["special_tokens"] == ["<|endoftext|>"]
        assert len(trainer.kw["initial_alphabet"]) == 256
        assert all(isinstance(t, str) for t in iterator)
        assert isinstance(self.normalizer, normalizers.NFC)
        assert self.pre_tokenizer.kw == {"add_prefix_space": False, "use_regex": True}

    def save(self, path):
        _corpus().ByteTokenizer.write(path)

    @classmethod
    def from_file(cls, path):
        t = cls(models.BPE())
        t._bt = _corpus().ByteTokenizer.load(path)
        return t

    def get_vocab_size(self):
        return self._bt.vocab_size

    def token_to_id(self, s):
        return self._bt.eot_id if s == "<|endoftext|>" else None

    def encode_batch(self, texts):
        return [Encoding(ids) for ids in self._bt.encode_batch(texts)]

    def decode(self, ids, skip_special_tokens=True):
        return self._bt.decode(ids)


def _ns(name, **members):
    m = types.ModuleType(f"{_HERE}.{name}")
    m.__dict__.update(members)
    sys.modules[m.__name__] = m
    return m


class _Kw:
    def __init__(self, *a, **kw):
        assert not a, a
        self.kw = kw


class _ByteLevelPre(_Kw):
    @staticmethod
    def alphabet():
        return [chr(i) for i in range(256)]


models = _ns("models", BPE=type("BPE", (_Kw,), {}))
normalizers = _ns("normalizers", NFC=type("NFC", (_Kw,), {}))
pre_tokenizers = _ns("pre_tokenizers", ByteLevel=_ByteLevelPre)
decoders = _ns("decoders", ByteLevel=type("ByteLevel", (_Kw,), {}))
processors = _ns("processors", ByteLevel=type("ByteLevel", (_Kw,), {}))
trainers = _ns("trainers", BpeTrainer=type("BpeTrainer", (_Kw,), {}))
