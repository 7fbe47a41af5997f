"""Type stubs of the extension module `tinylens._native` (src/lib.rs).

Use the `tinylens` package, which wraps this module with TransformerLens's argument
conventions; these are the raw bindings it calls."""

from os import PathLike
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

HOST_VERSION: str

class Error(Exception):
    """Every error of tinylens; the message is the CLI's one-line message."""

class Model:
    @staticmethod
    def from_path(path: Union[str, PathLike[str]]) -> Model: ...
    @staticmethod
    def from_bytes(data: bytes) -> Model: ...
    def config_json(self) -> str: ...
    @property
    def checksum(self) -> int: ...
    def processing(self) -> Dict[str, bool]: ...
    def storage(self) -> List[Tuple[str, str]]: ...
    @property
    def ram_bytes(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def to_bytes(self) -> bytes: ...
    def vocab(self) -> Optional[List[str]]: ...
    def has_tokenizer(self) -> bool: ...
    def to_tokens(self, texts: Sequence[str], prepend_bos: bool) -> List[List[int]]: ...
    def decode_tokens(self, tokens: Sequence[int], per_token: bool) -> List[str]: ...
    def state_dict(self) -> List[Tuple[str, npt.NDArray[np.float32]]]: ...
    def hook_names(self) -> List[str]: ...
    def run(
        self,
        tokens: npt.NDArray[np.int64],
        probes: Sequence[str],
        ablate: Sequence[Tuple[int, int, str]] = ...,
        means: Optional[npt.NDArray[np.float32]] = None,
        frozen: Optional[npt.NDArray[np.float32]] = None,
        patches: Sequence[Tuple[str, npt.NDArray[np.float32]]] = ...,
    ) -> Tuple[npt.NDArray[np.float32], Dict[str, npt.NDArray[np.float32]]]: ...
    def trace(
        self,
        tokens: npt.NDArray[np.int64],
        probes: Sequence[str],
        generate: int = 0,
        top_k: int = 0,
        temperature: float = 1.0,
        seed: int = 0,
        run_id: int = 0,
    ) -> Tuple[bytes, List[int]]: ...

def load_trace(
    path: Optional[Union[str, PathLike[str]]] = None,
    data: Optional[bytes] = None,
    run: int = 0,
) -> Tuple[npt.NDArray[np.int64], Dict[str, npt.NDArray[np.float32]], str]: ...
def convert(
    tensors: Sequence[Tuple[str, str, Sequence[int], bytes]],
    cfg_json: str,
    quant: str = "int8",
    embed_quant: Optional[str] = None,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    vocab: Optional[Sequence[str]] = None,
    tokenizer_json: Optional[Tuple[bytes, str]] = None,
) -> Tuple[bytes, str]: ...
def copying_scores(model: Model) -> List[List[float]]: ...
def composition_scores(
    model: Model, kind: str, subtract_baseline: bool = False
) -> List[List[List[List[float]]]]: ...
def head_scores(
    model: Model,
    tokens: npt.NDArray[np.int64],
    kind: str,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> List[List[float]]: ...
def write_file(path: Union[str, PathLike[str]], data: bytes) -> None: ...
