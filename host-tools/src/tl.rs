//! TransformerLens import (in progress).
