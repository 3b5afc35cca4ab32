/*
 * The C kernels of ingest, each over many short byte strings at once (an Arrow-style data
 * buffer and int64 offsets), without a Python call per string and without the GIL, and two of
 * serving:
 *
 * - blake2b_128_joined: for each row of several string columns, what
 *   hashlib.blake2b(s, digest_size=16) gives for s, the row's values joined. Ingest names
 *   events that come without an id by the BLAKE2b digest of their content
 *   (pipelines.contract.content_ids); hashing row by row in Python was the largest cost of an
 *   ingest that the GIL serialised. This is the compression function of RFC 7693, unkeyed,
 *   with a 16-byte digest; rows that fit one block go four at a time through AVX2 where the CPU
 *   has it (the same digests).
 * - json_lines: plain JSON object lines (the web clickstream) as typed columns, exactly as
 *   pyarrow.json reads them, or None when a line holds anything else (the caller then lets
 *   pyarrow read the file): pipelines.adapters.base.read_jsonl_table.
 * - hmac_sha256: for each string s, hmac.new(key, prefix + s, sha256).digest(), cut to a
 *   length: the keyed pseudonyms of users and persons (pipelines.identity.Pseudonymiser),
 *   SHA-256 as FIPS 180-4 defines it, with the x86 SHA extensions where the CPU has them.
 * - first_appearance: a dictionary column's indices renumbered in order of first appearance
 *   (pipelines.lake._first_appearance: how each event file stores its dictionaries), for one
 *   date or, with run starts, for every date of an ingest in one pass (pipelines.lake.stored_slices).
 * - repeated64: which of many 64-bit hashes occur more than once (pipelines.ingest._repeated).
 * - sum_rows and ranks_at (serving, not ingest): a person's item-item scores, the sum of a
 *   sparse matrix's rows, and the ranks of a few items in a scored row
 *   (training.recommender._sum_rows and _ranks_at), which in numpy cost more in calls over
 *   small arrays than in arithmetic.
 * - tree_margins (serving): the re-ranker's trees walked for a few hundred rows, the sum
 *   XGBoost's CPU predictor gives, without its fixed cost per call (training.trees).
 * - vae_person (serving): the attention-VAE's forward pass for one person's events
 *   (training.vae_numpy.NumpyVAE), about forty numpy calls over small arrays in one.
 * - hash64: a 64-bit hash of each string (FNV-1a's steps over its 8-byte words, then
 *   MurmurHash3's fmix64 finaliser so that every bit depends on every byte), for finding
 *   repeated event ids (pipelines.ingest._repeated), where equal strings must hash alike and
 *   nothing more.
 *
 * tests/code/test_fast_paths.py checks them against hashlib, hmac, a Python hash64 and pyarrow.json. The module
 * is optional (pipelines.native): without a C compiler at install, ingest computes the same
 * values in Python and numpy, more slowly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static const uint64_t IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

/* The message schedule of rounds 0-9; rounds 10 and 11 repeat rounds 0 and 1. */
static const uint8_t SIGMA[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8); /* one load where the machine is little-endian, as BLAKE2b's words are */
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

#define G(a, b, c, d, x, y)            \
    do {                               \
        a = a + b + (x);               \
        d = rotr64(d ^ a, 32);         \
        c = c + d;                     \
        b = rotr64(b ^ c, 24);         \
        a = a + b + (y);               \
        d = rotr64(d ^ a, 16);         \
        c = c + d;                     \
        b = rotr64(b ^ c, 63);         \
    } while (0)

static void compress(uint64_t h[8], const uint8_t block[128], uint64_t counter, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= counter; /* the high word of the 128-bit counter stays 0: strings under 2**64 bytes */
    if (last) v[14] = ~v[14];
    /* The rounds written out: each round's message schedule is then a constant, and the
       message words and the state stay in registers. */
#define ROUND(r)                                                                          \
    do {                                                                                  \
        const uint8_t *s = SIGMA[(r) % 10];                                               \
        G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);                                     \
        G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);                                     \
        G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);                                    \
        G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);                                    \
        G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);                                    \
        G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);                                  \
        G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);                                   \
        G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);                                   \
    } while (0)
    ROUND(0);
    ROUND(1);
    ROUND(2);
    ROUND(3);
    ROUND(4);
    ROUND(5);
    ROUND(6);
    ROUND(7);
    ROUND(8);
    ROUND(9);
    ROUND(10);
    ROUND(11);
#undef ROUND
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* BLAKE2b fed piece by piece: a block is compressed only once more input follows it, so the
 * last block, full or not, is the final one. */
typedef struct {
    uint64_t h[8];
    uint8_t block[128];
    size_t fill;
    uint64_t total;
} stream;

static void stream_init(stream *s) {
    memcpy(s->h, IV, sizeof s->h);
    s->h[0] ^= 0x01010000ULL ^ 16ULL;
    s->fill = 0;
    s->total = 0;
}

static void stream_update(stream *s, const uint8_t *p, size_t n) {
    while (n > 0) {
        if (s->fill == 128) {
            s->total += 128;
            compress(s->h, s->block, s->total, 0);
            s->fill = 0;
        }
        size_t take = 128 - s->fill < n ? 128 - s->fill : n;
        memcpy(s->block + s->fill, p, take);
        s->fill += take;
        p += take;
        n -= take;
    }
}

static void stream_final(stream *s, uint8_t out[16]) {
    s->total += s->fill;
    memset(s->block + s->fill, 0, 128 - s->fill);
    compress(s->h, s->block, s->total, 1);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 8; j++) out[8 * i + j] = (uint8_t)(s->h[i] >> (8 * j));
}

/* The n = len(offsets) / 8 - 1 ranges data[offsets[i]:offsets[i+1]], checked; n < 0 on error. */
static Py_ssize_t ranges(Py_buffer *data, Py_buffer *offsets) {
    if (offsets->len % 8 != 0 || offsets->len < 8) {
        PyErr_SetString(PyExc_ValueError, "offsets: int64 values, at least one");
        return -1;
    }
    Py_ssize_t n = offsets->len / 8 - 1;
    const int64_t *off = (const int64_t *)offsets->buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (off[i] < 0 || off[i] > off[i + 1] || off[i + 1] > data->len) {
            PyErr_Format(PyExc_ValueError, "offsets[%zd:%zd] is not a range of data", i, i + 2);
            return -1;
        }
    }
    return n;
}

static inline uint64_t fmix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* FNV-1a's steps over little-endian 8-byte words, then over the last bytes one by one, with
 * the length folded in and MurmurHash3's fmix64 at the end: a multiply per word, not per byte. */
static uint64_t hash64_one(const uint8_t *p, int64_t n) {
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)n;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) h = (h ^ load64(p + i)) * 0x100000001b3ULL;
    for (; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return fmix64(h);
}

/* hash64(data, offsets) -> bytes: each range's hash64, native-endian, one after another. */
static PyObject *hash64(PyObject *self, PyObject *args) {
    Py_buffer data, offsets;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &offsets)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = ranges(&data, &offsets);
    if (n >= 0) result = PyBytes_FromStringAndSize(NULL, 8 * n);
    if (result != NULL) {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        const uint8_t *bytes = (const uint8_t *)data.buf;
        const int64_t *off = (const int64_t *)offsets.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t h = hash64_one(bytes + off[i], off[i + 1] - off[i]);
            memcpy(out + 8 * i, &h, 8); /* native byte order: read back as numpy uint64 */
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    return result;
}

/* SHA-256 (FIPS 180-4) and HMAC (RFC 2104) over it. */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t rotr32(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static void sha256_compress(uint32_t h[8], const uint8_t block[64]) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 | (uint32_t)block[4 * i + 2] << 8 |
               (uint32_t)block[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr32(w[i - 15], 7) ^ rotr32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr32(w[i - 2], 17) ^ rotr32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI_PATH 1
/* The same compression with the x86 SHA extensions (four rounds per sha256rnds2 pair), for CPUs
 * that have them (sha256_ni_usable); the message schedule as sha256msg1/msg2 compute it:
 * W[t] = msg2(msg1(W[t-4], W[t-3]) + (W[t-2], W[t-1]) shifted by one word, W[t-1]), four
 * words per W. */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_compress_ni(uint32_t h[8], const uint8_t block[64]) {
    const __m128i order = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL); /* big-endian words */
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1); /* CDAB */
    __m128i state1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B); /* EFGH */
    __m128i state0 = _mm_alignr_epi8(tmp, state1, 8);                                  /* ABEF */
    state1 = _mm_blend_epi16(state1, tmp, 0xF0);                                         /* CDGH */
    const __m128i abef = state0, cdgh = state1;
    __m128i w[4];
    for (int g = 0; g < 16; g++) {
        __m128i *m = &w[g & 3];
        if (g < 4) {
            *m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * g)), order);
        } else {
            __m128i older = _mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]);
            older = _mm_add_epi32(older, _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
            *m = _mm_sha256msg2_epu32(older, w[(g + 3) & 3]);
        }
        __m128i msg = _mm_add_epi32(*m, _mm_loadu_si128((const __m128i *)&K256[4 * g]));
        state1 = _mm_sha256rnds2_epu32(state1, state0, msg);
        state0 = _mm_sha256rnds2_epu32(state0, state1, _mm_shuffle_epi32(msg, 0x0E));
    }
    state0 = _mm_add_epi32(state0, abef);
    state1 = _mm_add_epi32(state1, cdgh);
    tmp = _mm_shuffle_epi32(state0, 0x1B);                                   /* FEBA */
    state1 = _mm_shuffle_epi32(state1, 0xB1);                                /* DCHG */
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(tmp, state1, 0xF0)); /* DCBA */
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(state1, tmp, 8));    /* HGFE */
}

/* Whether the CPU has the SHA extensions and SSE4.1 (CPUID leaf 7 EBX bit 29, leaf 1 ECX bit 19). */
static int sha256_ni_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)) || !(c & (1u << 9))) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 29) & 1;
}
#endif

typedef struct {
    uint32_t h[8];
    uint8_t block[64];
    size_t fill;
    uint64_t total;
    void (*compress)(uint32_t h[8], const uint8_t block[64]);
} sha256_state;

static void sha256_init(sha256_state *s, void (*compress)(uint32_t h[8], const uint8_t block[64])) {
    static const uint32_t IV256[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, IV256, sizeof IV256);
    s->fill = 0;
    s->total = 0;
    s->compress = compress;
}

static void sha256_update(sha256_state *s, const uint8_t *p, size_t n) {
    s->total += n;
    while (n > 0) {
        size_t take = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->block + s->fill, p, take);
        s->fill += take, p += take, n -= take;
        if (s->fill == 64) {
            s->compress(s->h, s->block);
            s->fill = 0;
        }
    }
}

static void sha256_final(sha256_state *s, uint8_t out[32]) {
    uint64_t bits = s->total * 8;
    s->block[s->fill++] = 0x80; /* fill < 64 after an update */
    if (s->fill > 56) {
        memset(s->block + s->fill, 0, 64 - s->fill);
        s->compress(s->h, s->block);
        s->fill = 0;
    }
    memset(s->block + s->fill, 0, 56 - s->fill);
    for (int i = 0; i < 8; i++) s->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    s->compress(s->h, s->block);
    for (int i = 0; i < 8; i++)
        out[4 * i] = (uint8_t)(s->h[i] >> 24), out[4 * i + 1] = (uint8_t)(s->h[i] >> 16),
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8), out[4 * i + 3] = (uint8_t)s->h[i];
}

/* hmac_sha256(key, prefix, data, offsets, width, portable=0) -> bytes: for each range s of
 * data, the first width bytes of HMAC-SHA256(key, prefix + s), one after another. The key's
 * inner and outer states are computed once. The SHA extensions are used where the CPU has
 * them, unless portable (tests compare both paths). */
static PyObject *hmac_sha256(PyObject *self, PyObject *args) {
    Py_buffer key, prefix, data, offsets;
    Py_ssize_t width;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*y*n|p", &key, &prefix, &data, &offsets, &width, &portable)) return NULL;
    void (*compress)(uint32_t h[8], const uint8_t block[64]) = sha256_compress;
#ifdef HAVE_SHA_NI_PATH
    static int sha_ni = -1; /* asked once (CPUID traps to the hypervisor in a VM); the GIL is held here */
    if (sha_ni < 0) sha_ni = sha256_ni_usable();
    if (!portable && sha_ni) compress = sha256_compress_ni;
#endif
    PyObject *result = NULL;
    Py_ssize_t n = ranges(&data, &offsets);
    if (n >= 0 && (width < 1 || width > 32)) {
        PyErr_SetString(PyExc_ValueError, "width: 1 to 32 bytes");
        n = -1;
    }
    if (n >= 0) result = PyBytes_FromStringAndSize(NULL, width * n);
    if (result != NULL) {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        const uint8_t *bytes = (const uint8_t *)data.buf;
        const int64_t *off = (const int64_t *)offsets.buf;
        Py_BEGIN_ALLOW_THREADS
        uint8_t padded[64] = {0}, pad[64], digest[32];
        sha256_state inner0, outer0, st;
        if (key.len > 64) {
            sha256_init(&st, compress);
            sha256_update(&st, (const uint8_t *)key.buf, (size_t)key.len);
            sha256_final(&st, padded);
        } else {
            memcpy(padded, key.buf, (size_t)key.len);
        }
        for (int i = 0; i < 64; i++) pad[i] = padded[i] ^ 0x36;
        sha256_init(&inner0, compress);
        sha256_update(&inner0, pad, 64);
        for (int i = 0; i < 64; i++) pad[i] = padded[i] ^ 0x5c;
        sha256_init(&outer0, compress);
        sha256_update(&outer0, pad, 64);
        for (Py_ssize_t i = 0; i < n; i++) {
            st = inner0;
            sha256_update(&st, (const uint8_t *)prefix.buf, (size_t)prefix.len);
            sha256_update(&st, bytes + off[i], (size_t)(off[i + 1] - off[i]));
            sha256_final(&st, digest);
            st = outer0;
            sha256_update(&st, digest, 32);
            sha256_final(&st, digest);
            memcpy(out + width * i, digest, (size_t)width);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    return result;
}

/* first_appearance(indices, valid, size[, starts]) -> (indices, used[, ends]): a dictionary
 * column renumbered by first appearance. indices: int32 entries of a dictionary of size
 * entries; valid: a byte per row (0: null) or None. Returns the rows' new indices (int32; -1
 * where null) and the old entries in the order they first occur (int32). With starts (int64,
 * ascending, the first 0), each run of rows from one start to the next is renumbered on its
 * own, as if alone (each event file's dictionary), and ends (int64) gives where each run's
 * entries end in used. */
static PyObject *first_appearance(PyObject *self, PyObject *args) {
    Py_buffer indices, valid = {0}, starts = {0};
    PyObject *valid_obj, *starts_obj = Py_None;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "y*On|O", &indices, &valid_obj, &size, &starts_obj)) return NULL;
    PyObject *renumbered = NULL, *used = NULL, *ends = NULL, *result = NULL;
    int32_t *slot = NULL;
    int has_valid = valid_obj != Py_None, has_starts = starts_obj != Py_None;
    if (has_valid && PyObject_GetBuffer(valid_obj, &valid, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&indices);
        return NULL;
    }
    if (has_starts && PyObject_GetBuffer(starts_obj, &starts, PyBUF_SIMPLE) < 0) {
        if (has_valid) PyBuffer_Release(&valid);
        PyBuffer_Release(&indices);
        return NULL;
    }
    Py_ssize_t n = indices.len / 4;
    const int32_t *in = (const int32_t *)indices.buf;
    const uint8_t *ok = has_valid ? (const uint8_t *)valid.buf : NULL;
    Py_ssize_t runs = has_starts ? starts.len / 8 : 1;
    const int64_t *start = has_starts ? (const int64_t *)starts.buf : NULL;
    if (indices.len % 4 != 0 || size < 0 || size >= INT32_MAX || (has_valid && valid.len != n) ||
        (has_starts && (starts.len % 8 != 0 || runs < 1))) {
        PyErr_SetString(PyExc_ValueError,
                        "indices: int32 values; valid: a byte per index; size: the dictionary's length; "
                        "starts: int64 run starts");
        goto done;
    }
    for (Py_ssize_t r = 0; has_starts && r < runs; r++) {
        if ((r == 0 && start[r] != 0) || (r > 0 && start[r] < start[r - 1]) || start[r] > n) {
            PyErr_SetString(PyExc_ValueError, "starts: ascending row positions from 0 to at most the rows");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((!ok || ok[i]) && (in[i] < 0 || in[i] >= size)) {
            PyErr_Format(PyExc_ValueError, "indices[%zd] = %d is not an entry of a dictionary of %zd", i, in[i], size);
            goto done;
        }
    }
    slot = (int32_t *)PyMem_RawMalloc((size_t)(size > 0 ? size : 1) * sizeof(int32_t));
    renumbered = PyBytes_FromStringAndSize(NULL, 4 * n);
    /* each run holds each entry at most once: no more entries than rows, nor than size per run */
    Py_ssize_t room = has_starts ? n : (n < size ? n : size);
    used = PyBytes_FromStringAndSize(NULL, 4 * room);
    ends = has_starts ? PyBytes_FromStringAndSize(NULL, 8 * runs) : NULL;
    if (slot == NULL || renumbered == NULL || used == NULL || (has_starts && ends == NULL)) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    int32_t *out = (int32_t *)PyBytes_AS_STRING(renumbered), *first = (int32_t *)PyBytes_AS_STRING(used);
    int64_t *end = has_starts ? (int64_t *)PyBytes_AS_STRING(ends) : NULL;
    Py_ssize_t k = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t e = 0; e < size; e++) slot[e] = -1;
    for (Py_ssize_t r = 0; r < runs; r++) {
        Py_ssize_t lo = has_starts ? (Py_ssize_t)start[r] : 0;
        Py_ssize_t hi = has_starts && r + 1 < runs ? (Py_ssize_t)start[r + 1] : n;
        Py_ssize_t base = k; /* this run's entries are first[base..k) */
        for (Py_ssize_t i = lo; i < hi; i++) {
            if (ok && !ok[i]) {
                out[i] = -1;
                continue;
            }
            int32_t e = in[i];
            if (slot[e] < 0) {
                slot[e] = (int32_t)(k - base);
                first[k++] = e;
            }
            out[i] = slot[e];
        }
        for (Py_ssize_t j = base; j < k; j++) slot[first[j]] = -1; /* the next run starts afresh */
        if (end) end[r] = (int64_t)k;
    }
    Py_END_ALLOW_THREADS
    if (_PyBytes_Resize(&used, 4 * k) == 0)
        result = has_starts ? PyTuple_Pack(3, renumbered, used, ends) : PyTuple_Pack(2, renumbered, used);
done:
    Py_XDECREF(renumbered);
    Py_XDECREF(used);
    Py_XDECREF(ends);
    PyMem_RawFree(slot);
    if (has_starts) PyBuffer_Release(&starts);
    if (has_valid) PyBuffer_Release(&valid);
    PyBuffer_Release(&indices);
    return result;
}

/* repeated64(hashes, rows) -> bytes: for each of the rows (int64 positions into hashes, a
 * uint64 per position), 1 if another of the rows has the same hash, else 0. Repeats are few:
 * a first pass sets, in two bitmaps small enough to stay in cache, which slots (a hash's top
 * bits) were seen and which were seen twice; only the rows of a slot seen twice go through an
 * open-addressing table (linear probing, at most half full) of 4-byte entries, each holding
 * 1 + the index of the first of those rows with its hash (0: empty). */
static PyObject *repeated64(PyObject *self, PyObject *args) {
    Py_buffer hashes, rows;
    if (!PyArg_ParseTuple(args, "y*y*", &hashes, &rows)) return NULL;
    PyObject *result = NULL;
    uint8_t *seen = NULL;
    uint32_t *table = NULL, *maybe = NULL;
    Py_ssize_t n = rows.len / 8, m = hashes.len / 8;
    if (hashes.len % 8 != 0 || rows.len % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "hashes and rows: 8-byte values");
        goto done;
    }
    if ((uint64_t)n >= UINT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "rows: fewer than 2**31 of them");
        goto done;
    }
    const uint64_t *h = (const uint64_t *)hashes.buf;
    const int64_t *r = (const int64_t *)rows.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (r[i] < 0 || r[i] >= m) {
            PyErr_Format(PyExc_ValueError, "rows[%zd] = %lld is not a position in hashes", i, (long long)r[i]);
            goto done;
        }
    }
    int bits = 16; /* slots: about 8 per row, 2**16 to 2**24 (two bitmaps of at most 2 MiB each) */
    while (bits < 24 && ((size_t)1 << bits) < 8 * (size_t)n) bits++;
    const size_t slots = (size_t)1 << bits;
    seen = (uint8_t *)PyMem_RawCalloc(slots / 4, 1); /* seen, then seen twice */
    maybe = (uint32_t *)PyMem_RawMalloc((size_t)(n > 0 ? n : 1) * sizeof(uint32_t));
    result = PyBytes_FromStringAndSize(NULL, n);
    if (seen == NULL || maybe == NULL || result == NULL) {
        Py_CLEAR(result);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result), *twice = seen + slots / 8;
    Py_ssize_t k = 0;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    memset(out, 0, (size_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t slot = (size_t)(fmix64(h[r[i]]) >> (64 - bits));
        uint8_t bit = (uint8_t)(1u << (slot & 7));
        if (seen[slot >> 3] & bit) twice[slot >> 3] |= bit;
        seen[slot >> 3] |= bit;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t slot = (size_t)(fmix64(h[r[i]]) >> (64 - bits));
        if (twice[slot >> 3] & (1u << (slot & 7))) maybe[k++] = (uint32_t)i;
    }
    size_t size = 16;
    while (size < 2 * (size_t)k) size <<= 1;
    table = (uint32_t *)PyMem_RawCalloc(size, sizeof(uint32_t));
    if (table == NULL) {
        failed = 1;
    } else {
        const size_t mask = size - 1;
        for (Py_ssize_t j = 0; j < k; j++) {
            uint32_t i = maybe[j];
            uint64_t key = h[r[i]];
            size_t s = (size_t)fmix64(key) & mask;
            while (table[s] != 0 && h[r[table[s] - 1]] != key) s = (s + 1) & mask;
            if (table[s] == 0) {
                table[s] = i + 1;
            } else {
                out[i] = 1;
                out[table[s] - 1] = 1;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        Py_CLEAR(result);
        PyErr_NoMemory();
    }
done:
    PyMem_RawFree(table);
    PyMem_RawFree(maybe);
    PyMem_RawFree(seen);
    PyBuffer_Release(&hashes);
    PyBuffer_Release(&rows);
    return result;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_BLAKE2B_AVX2 1
/* BLAKE2b-128 of four messages of at most one block each (lengths[j] bytes of blocks[j], zero
 * beyond), one message per 64-bit lane of AVX2 vectors: the same compression as compress() with
 * the counter at each length and the final flag set, four at a time. */
__attribute__((target("avx2"))) static void blake2b_128_one_block_x4(uint8_t blocks[4][128], const uint64_t lengths[4],
                                                                      uint8_t digests[4][16]) {
    const __m256i r16 = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9, 2, 3, 4, 5, 6, 7, 0, 1,
                                         10, 11, 12, 13, 14, 15, 8, 9);
    const __m256i r24 = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10, 3, 4, 5, 6, 7, 0, 1, 2,
                                         11, 12, 13, 14, 15, 8, 9, 10);
    __m256i m[16], v[16];
    for (int i = 0; i < 16; i++)
        m[i] = _mm256_set_epi64x((long long)load64(blocks[3] + 8 * i), (long long)load64(blocks[2] + 8 * i),
                                 (long long)load64(blocks[1] + 8 * i), (long long)load64(blocks[0] + 8 * i));
    uint64_t h0[8];
    memcpy(h0, IV, sizeof h0);
    h0[0] ^= 0x01010000ULL ^ 16ULL; /* the parameter block of an unkeyed 16-byte digest */
    for (int i = 0; i < 8; i++) {
        v[i] = _mm256_set1_epi64x((long long)h0[i]);
        v[i + 8] = _mm256_set1_epi64x((long long)IV[i]);
    }
    v[12] = _mm256_xor_si256(v[12], _mm256_set_epi64x((long long)lengths[3], (long long)lengths[2],
                                                      (long long)lengths[1], (long long)lengths[0]));
    v[14] = _mm256_xor_si256(v[14], _mm256_set1_epi64x(-1)); /* the last block */
#define G4(a, b, c, d, x, y)                                                                         \
    do {                                                                                             \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), x);                                             \
        d = _mm256_shuffle_epi32(_mm256_xor_si256(d, a), _MM_SHUFFLE(2, 3, 0, 1));                   \
        c = _mm256_add_epi64(c, d);                                                                  \
        b = _mm256_shuffle_epi8(_mm256_xor_si256(b, c), r24);                                        \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), y);                                             \
        d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), r16);                                        \
        c = _mm256_add_epi64(c, d);                                                                  \
        b = _mm256_xor_si256(b, c);                                                                  \
        b = _mm256_or_si256(_mm256_srli_epi64(b, 63), _mm256_add_epi64(b, b));                       \
    } while (0)
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = SIGMA[r % 10];
        G4(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
        G4(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
        G4(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
        G4(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
        G4(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
        G4(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
        G4(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
        G4(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
    }
#undef G4
    uint64_t words[2][4];
    for (int i = 0; i < 2; i++) {
        __m256i h = _mm256_xor_si256(_mm256_set1_epi64x((long long)h0[i]), _mm256_xor_si256(v[i], v[i + 8]));
        _mm256_storeu_si256((__m256i *)words[i], h);
    }
    for (int j = 0; j < 4; j++)
        for (int i = 0; i < 2; i++)
            for (int b = 0; b < 8; b++) digests[j][8 * i + b] = (uint8_t)(words[i][j] >> (8 * b));
}
#endif

#define MAX_FIELDS 32

/* blake2b_128_joined(fields, separator, null) -> bytes: for each row i, the BLAKE2b-128 of the
 * fields' values joined by separator, a missing value (valid[i] == 0) written as null; each
 * field is (data, offsets, valid or None). The joined strings are never built. */
static PyObject *blake2b_128_joined(PyObject *self, PyObject *args) {
    PyObject *fields_obj;
    Py_buffer separator, null;
    if (!PyArg_ParseTuple(args, "Oy*y*", &fields_obj, &separator, &null)) return NULL;
    PyObject *result = NULL, *fields = PySequence_Fast(fields_obj, "fields: a sequence of (data, offsets, valid)");
    Py_buffer data[MAX_FIELDS], offsets[MAX_FIELDS], valid[MAX_FIELDS];
    int has_valid[MAX_FIELDS];
    Py_ssize_t k = 0, got = 0, n = -1;
    if (fields == NULL) goto done;
    k = PySequence_Fast_GET_SIZE(fields);
    if (k < 1 || k > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "fields: 1 to %d of them", MAX_FIELDS);
        goto done;
    }
    for (; got < k; got++) {
        PyObject *valid_obj;
        has_valid[got] = 0;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fields, got), "y*y*O", &data[got], &offsets[got], &valid_obj))
            goto done;
        if (valid_obj != Py_None) {
            if (PyObject_GetBuffer(valid_obj, &valid[got], PyBUF_SIMPLE) < 0) {
                PyBuffer_Release(&data[got]);
                PyBuffer_Release(&offsets[got]);
                goto done;
            }
            has_valid[got] = 1;
        }
        Py_ssize_t rows = ranges(&data[got], &offsets[got]);
        if (rows < 0) {
            got++;
            goto done;
        }
        if ((n >= 0 && rows != n) || (has_valid[got] && valid[got].len != rows)) {
            PyErr_Format(PyExc_ValueError, "field %zd has another number of rows", got);
            got++;
            goto done;
        }
        n = rows;
    }
    result = PyBytes_FromStringAndSize(NULL, 16 * n);
    if (result == NULL) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
#ifdef HAVE_BLAKE2B_AVX2
    static int avx2 = -1; /* asked once; the GIL is held here */
    if (avx2 < 0) avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
    Py_BEGIN_ALLOW_THREADS
    stream st;
#ifdef HAVE_BLAKE2B_AVX2
    /* Rows whose joined fields fit one block (nearly all): four at a time, one per 64-bit lane. */
    uint8_t lanes[4][128];
    uint64_t lengths[4];
    Py_ssize_t rows[4];
    int filled = 0;
#endif
    for (Py_ssize_t i = 0; i < n; i++) {
#ifdef HAVE_BLAKE2B_AVX2
        if (avx2) {
            size_t length = 0;
            int fits = 1;
            for (Py_ssize_t f = 0; f < k && fits; f++) {
                const uint8_t *piece;
                size_t size;
                if (has_valid[f] && !((const uint8_t *)valid[f].buf)[i]) {
                    piece = (const uint8_t *)null.buf, size = (size_t)null.len;
                } else {
                    const int64_t *off = (const int64_t *)offsets[f].buf;
                    piece = (const uint8_t *)data[f].buf + off[i], size = (size_t)(off[i + 1] - off[i]);
                }
                size_t with_separator = size + (f > 0 ? (size_t)separator.len : 0);
                if (length + with_separator > 128) {
                    fits = 0;
                    break;
                }
                if (f > 0) memcpy(lanes[filled] + length, separator.buf, (size_t)separator.len);
                memcpy(lanes[filled] + length + (with_separator - size), piece, size);
                length += with_separator;
            }
            if (fits) {
                memset(lanes[filled] + length, 0, 128 - length);
                lengths[filled] = length;
                rows[filled++] = i;
                if (filled == 4) {
                    uint8_t digests[4][16];
                    blake2b_128_one_block_x4(lanes, lengths, digests);
                    for (int j = 0; j < 4; j++) memcpy(out + 16 * rows[j], digests[j], 16);
                    filled = 0;
                }
                continue;
            }
        }
#endif
        stream_init(&st);
        for (Py_ssize_t f = 0; f < k; f++) {
            if (f > 0) stream_update(&st, (const uint8_t *)separator.buf, (size_t)separator.len);
            if (has_valid[f] && !((const uint8_t *)valid[f].buf)[i]) {
                stream_update(&st, (const uint8_t *)null.buf, (size_t)null.len);
            } else {
                const int64_t *off = (const int64_t *)offsets[f].buf;
                stream_update(&st, (const uint8_t *)data[f].buf + off[i], (size_t)(off[i + 1] - off[i]));
            }
        }
        stream_final(&st, out + 16 * i);
    }
#ifdef HAVE_BLAKE2B_AVX2
    for (int j = 0; j < filled; j++) { /* the last few, one at a time */
        stream_init(&st);
        stream_update(&st, lanes[j], (size_t)lengths[j]);
        stream_final(&st, out + 16 * rows[j]);
    }
#endif
    Py_END_ALLOW_THREADS
done:
    for (Py_ssize_t f = 0; f < got; f++) {
        PyBuffer_Release(&data[f]);
        PyBuffer_Release(&offsets[f]);
        if (has_valid[f]) PyBuffer_Release(&valid[f]);
    }
    Py_XDECREF(fields);
    PyBuffer_Release(&separator);
    PyBuffer_Release(&null);
    return result;
}



/* json_lines(data, starts, ends, names, kinds) -> list | None: the JSON objects at
 * data[starts[i]:ends[i]] (one per line, each from its '{' to its '}'), as columns: for each
 * name, its values in every row, typed by kinds (one byte per name: 's' string, 'i' int64,
 * 'f' float64), null where the key is absent or null. The rows may only hold what this
 * parser reads exactly as pyarrow.json does (the adapters' readers check it against pyarrow):
 * keys without escapes; strings of valid UTF-8 with JSON's escapes (surrogate pairs joined);
 * numbers without an exponent, an int64 column's of at most 18 digits and no fraction, a
 * float64 column's of at most 17 digits, converted by strtod (correctly rounded, as Arrow's
 * own conversion); true, false, null and numbers or strings for keys not named; each name at
 * most once per object. For anything else (nested values, exponents, a type other than the
 * column's, a second object on the line, or invalid JSON) it returns None, and the caller
 * parses the file with pyarrow. For each name: a string column's (int32 offsets, bytes,
 * valid), a number column's (values, None, valid); valid is a byte per row, or None when no
 * row is null. */
typedef struct {
    uint8_t *buf;
    size_t len, cap;
} growable;

static int grow(growable *g, size_t more) {
    if (g->len + more <= g->cap) return 0;
    size_t cap = g->cap ? g->cap : (size_t)1 << 16;
    while (cap < g->len + more) cap *= 2;
    uint8_t *p = (uint8_t *)PyMem_RawRealloc(g->buf, cap);
    if (p == NULL) return -1;
    g->buf = p;
    g->cap = cap;
    return 0;
}

enum { JSON_OK = 0, JSON_OTHER = 1, JSON_NO_MEMORY = 2 };

static inline const uint8_t *json_ws(const uint8_t *p, const uint8_t *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
    return p;
}

static inline int hex4(const uint8_t *p, const uint8_t *end, uint32_t *out) {
    if (end - p < 4) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* The length of the valid UTF-8 sequence (2 to 4 bytes) at p, or 0 (Unicode's Table 3-7). */
static inline int utf8_length(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    int n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n == 0 || end - p < n) return 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    if (p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* A string from after its opening quote: its decoded bytes appended to out (if not NULL),
 * *next set after its closing quote. */
static int json_string(const uint8_t *p, const uint8_t *end, growable *out, const uint8_t **next) {
    while (p < end) {
        const uint8_t *run = p;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') p++;
        if (out != NULL && p > run) {
            if (grow(out, (size_t)(p - run))) return JSON_NO_MEMORY;
            memcpy(out->buf + out->len, run, (size_t)(p - run));
            out->len += (size_t)(p - run);
        }
        if (p >= end) return JSON_OTHER;
        uint8_t c = *p, bytes[4];
        int n = 0;
        if (c == '"') {
            *next = p + 1;
            return JSON_OK;
        } else if (c == '\\') {
            if (end - p < 2) return JSON_OTHER;
            switch (p[1]) {
                case '"': bytes[0] = '"'; break;
                case '\\': bytes[0] = '\\'; break;
                case '/': bytes[0] = '/'; break;
                case 'b': bytes[0] = '\b'; break;
                case 'f': bytes[0] = '\f'; break;
                case 'n': bytes[0] = '\n'; break;
                case 'r': bytes[0] = '\r'; break;
                case 't': bytes[0] = '\t'; break;
                case 'u': break;
                default: return JSON_OTHER;
            }
            if (p[1] != 'u') {
                n = 1;
                p += 2;
            } else {
                uint32_t cp, low;
                if (!hex4(p + 2, end, &cp)) return JSON_OTHER;
                p += 6;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return JSON_OTHER; /* a low surrogate alone */
                if (cp >= 0xD800 && cp <= 0xDBFF) {                  /* needs its low half */
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, end, &low) || low < 0xDC00 ||
                        low > 0xDFFF)
                        return JSON_OTHER;
                    p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                }
                if (cp < 0x80) {
                    bytes[n++] = (uint8_t)cp;
                } else if (cp < 0x800) {
                    bytes[n++] = (uint8_t)(0xC0 | (cp >> 6));
                    bytes[n++] = (uint8_t)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    bytes[n++] = (uint8_t)(0xE0 | (cp >> 12));
                    bytes[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                    bytes[n++] = (uint8_t)(0x80 | (cp & 0x3F));
                } else {
                    bytes[n++] = (uint8_t)(0xF0 | (cp >> 18));
                    bytes[n++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
                    bytes[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                    bytes[n++] = (uint8_t)(0x80 | (cp & 0x3F));
                }
            }
        } else if (c < 0x20) {
            return JSON_OTHER; /* a control character must be escaped */
        } else {
            n = utf8_length(p, end);
            if (n == 0) return JSON_OTHER;
            memcpy(bytes, p, (size_t)n);
            p += n;
        }
        if (out != NULL) {
            if (grow(out, (size_t)n)) return JSON_NO_MEMORY;
            memcpy(out->buf + out->len, bytes, (size_t)n);
            out->len += (size_t)n;
        }
    }
    return JSON_OTHER;
}

/* A number without an exponent at p: *next after it, *digits its digits, *fraction whether it
 * has one. */
static int json_number(const uint8_t *p, const uint8_t *end, const uint8_t **next, int *digits, int *fraction) {
    const uint8_t *start = p;
    if (p < end && *p == '-') p++;
    if (p >= end) return JSON_OTHER;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return JSON_OTHER;
    }
    *fraction = 0;
    if (p < end && *p == '.') {
        p++;
        const uint8_t *first = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == first) return JSON_OTHER;
        *fraction = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) return JSON_OTHER;
    *digits = (int)(p - start) - (*start == '-') - *fraction;
    *next = p;
    return JSON_OK;
}

static inline int same_key(const char *name, Py_ssize_t name_len, const uint8_t *key, Py_ssize_t key_len) {
    if (name_len != key_len) return 0;
    for (Py_ssize_t i = 0; i < key_len; i++)
        if ((uint8_t)name[i] != key[i]) return 0;
    return 1;
}

#define JSON_MAX_COLUMNS 32

static const double POWERS_OF_TEN[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                         1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

static PyObject *json_lines(PyObject *self, PyObject *args) {
    Py_buffer data, starts, ends, kinds;
    PyObject *names_obj;
    if (!PyArg_ParseTuple(args, "y*y*y*Oy*", &data, &starts, &ends, &names_obj, &kinds)) return NULL;
    PyObject *result = NULL, *names = PySequence_Fast(names_obj, "names: a sequence of bytes");
    const char *name[JSON_MAX_COLUMNS];
    Py_ssize_t name_len[JSON_MAX_COLUMNS];
    growable column[JSON_MAX_COLUMNS];    /* a string column's bytes, a number column's values */
    int64_t *offsets[JSON_MAX_COLUMNS];   /* a string column's ends (int32 once checked) */
    uint8_t *valid[JSON_MAX_COLUMNS];
    Py_ssize_t nulls[JSON_MAX_COLUMNS];
    Py_ssize_t k = 0, n = starts.len / 8;
    memset(column, 0, sizeof column);
    memset(offsets, 0, sizeof offsets);
    memset(valid, 0, sizeof valid);
    memset(nulls, 0, sizeof nulls);
    if (names == NULL) goto done;
    k = PySequence_Fast_GET_SIZE(names);
    const char *kind = (const char *)kinds.buf;
    if (k < 1 || k > JSON_MAX_COLUMNS || kinds.len != k || starts.len % 8 || ends.len != starts.len) {
        PyErr_Format(PyExc_ValueError, "json_lines: 1 to %d names, a kind for each, int64 starts and ends alike",
                     JSON_MAX_COLUMNS);
        k = 0;
        goto done;
    }
    const int64_t *start = (const int64_t *)starts.buf, *stop = (const int64_t *)ends.buf;
    for (Py_ssize_t f = 0; f < k; f++) {
        PyObject *item = PySequence_Fast_GET_ITEM(names, f);
        if (!PyBytes_Check(item) || (kind[f] != 's' && kind[f] != 'i' && kind[f] != 'f')) {
            PyErr_SetString(PyExc_ValueError, "json_lines: names are bytes, kinds 's', 'i' or 'f'");
            goto done;
        }
        name[f] = PyBytes_AS_STRING(item);
        name_len[f] = PyBytes_GET_SIZE(item);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (start[i] < 0 || start[i] >= stop[i] || stop[i] > data.len) {
            PyErr_Format(PyExc_ValueError, "json_lines: line %zd is not a range of data", i);
            goto done;
        }
    }
    int status = JSON_OK;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t f = 0; f < k && status == JSON_OK; f++) {
        valid[f] = (uint8_t *)PyMem_RawMalloc((size_t)(n > 0 ? n : 1));
        if (kind[f] == 's') offsets[f] = (int64_t *)PyMem_RawMalloc(sizeof(int64_t) * (size_t)(n + 1));
        if (valid[f] == NULL || (kind[f] == 's' && offsets[f] == NULL) || (kind[f] != 's' && grow(&column[f], 8 * (size_t)n)))
            status = JSON_NO_MEMORY;
        if (offsets[f] != NULL) offsets[f][0] = 0;
    }
    const uint8_t *bytes = (const uint8_t *)data.buf;
    for (Py_ssize_t i = 0; i < n && status == JSON_OK; i++) {
        const uint8_t *p = bytes + start[i], *end = bytes + stop[i];
        for (Py_ssize_t f = 0; f < k; f++) valid[f][i] = 2; /* 2: not seen yet */
        Py_ssize_t next_key = 0;
        if (*p != '{') {
            status = JSON_OTHER;
            break;
        }
        p = json_ws(p + 1, end);
        if (p < end && *p == '}') {
            p++;
        } else {
            for (;;) {
                if (p >= end || *p != '"') goto other;
                const uint8_t *key = ++p;
                while (p < end && *p != '"' && *p != '\\' && *p >= 0x20 && *p < 0x80) p++;
                if (p >= end || *p != '"') goto other;
                Py_ssize_t key_len = p - key, f = next_key;
                p = json_ws(p + 1, end);
                if (p >= end || *p != ':') goto other;
                p = json_ws(p + 1, end);
                if (p >= end) goto other;
                /* Lines of a log name their keys in the same order: try the name after the last first. */
                if (!(f < k && same_key(name[f], name_len[f], key, key_len))) {
                    f = 0;
                    while (f < k && !same_key(name[f], name_len[f], key, key_len)) f++;
                }
                next_key = f < k ? f + 1 : 0;
                if (f < k && valid[f][i] != 2) goto other; /* a key twice */
                uint8_t c = *p;
                if (c == 'n' || c == 't' || c == 'f') {
                    const char *word = c == 'n' ? "null" : c == 't' ? "true" : "false";
                    size_t len = strlen(word);
                    if ((size_t)(end - p) < len || memcmp(p, word, len) != 0) goto other;
                    if (c != 'n' && f < k) goto other; /* a boolean in a column of strings or numbers */
                    p += len;
                    if (f < k) {
                        valid[f][i] = 0;
                        if (kind[f] != 's') memset(column[f].buf + 8 * i, 0, 8);
                    }
                } else if (c == '"') {
                    if (f < k && kind[f] != 's') goto other;
                    int got = json_string(p + 1, end, f < k ? &column[f] : NULL, &p);
                    if (got != JSON_OK) {
                        status = got;
                        break;
                    }
                    if (f < k) valid[f][i] = 1;
                } else if (c == '-' || (c >= '0' && c <= '9')) {
                    const uint8_t *number = p;
                    int digits, fraction;
                    if (json_number(p, end, &p, &digits, &fraction) != JSON_OK || digits > 18) goto other;
                    if (f < k) {
                        if (kind[f] == 's') goto other;
                        if (kind[f] == 'i') {
                            if (fraction) goto other;
                            int64_t v = 0;
                            for (const uint8_t *d = number + (*number == '-'); d < p; d++) v = v * 10 + (*d - '0');
                            if (*number == '-') v = -v;
                            memcpy(column[f].buf + 8 * i, &v, 8);
                        } else {
                            if (digits > 17) goto other;
                            double v;
                            if (digits <= 15) {
                                /* Clinger's fast path: the digits as an integer below 2**53 and a
                                 * power of ten up to 10**22 are both exact doubles, so one
                                 * (correctly rounded) division is the correctly rounded value. */
                                int64_t m = 0, scale = 0;
                                for (const uint8_t *d = number + (*number == '-'); d < p; d++) {
                                    if (*d == '.') {
                                        scale = p - d - 1;
                                        continue;
                                    }
                                    m = m * 10 + (*d - '0');
                                }
                                v = (double)m / POWERS_OF_TEN[scale];
                                if (*number == '-') v = -v;
                            } else {
                                char text[40], *parsed;
                                size_t len = (size_t)(p - number);
                                memcpy(text, number, len);
                                text[len] = '\0';
                                v = strtod(text, &parsed);
                                if (parsed != text + len || !isfinite(v)) goto other;
                            }
                            memcpy(column[f].buf + 8 * i, &v, 8);
                        }
                        valid[f][i] = 1;
                    }
                } else {
                    goto other; /* an object, an array, or not JSON */
                }
                p = json_ws(p, end);
                if (p < end && *p == ',') {
                    p = json_ws(p + 1, end);
                    continue;
                }
                if (p < end && *p == '}') {
                    p++;
                    break;
                }
                goto other;
            }
            if (status != JSON_OK) break;
        }
        if (json_ws(p, end) != end) goto other; /* more than one object on the line */
        for (Py_ssize_t f = 0; f < k; f++) {
            if (valid[f][i] == 2) { /* absent: null */
                valid[f][i] = 0;
                if (kind[f] != 's') memset(column[f].buf + 8 * i, 0, 8);
            }
            nulls[f] += valid[f][i] == 0;
            if (kind[f] == 's') offsets[f][i + 1] = (int64_t)column[f].len;
        }
        continue;
    other:
        status = JSON_OTHER;
    }
    for (Py_ssize_t f = 0; f < k && status == JSON_OK; f++)
        if (kind[f] == 's' && column[f].len > INT32_MAX) status = JSON_OTHER;
    Py_END_ALLOW_THREADS
    if (status == JSON_NO_MEMORY) {
        PyErr_NoMemory();
        goto done;
    }
    if (status == JSON_OTHER) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyList_New(k);
    for (Py_ssize_t f = 0; result != NULL && f < k; f++) {
        PyObject *values, *text = Py_NewRef(Py_None), *mask = Py_NewRef(Py_None);
        if (kind[f] == 's') {
            values = PyBytes_FromStringAndSize(NULL, 4 * (n + 1));
            if (values != NULL) {
                int32_t *o = (int32_t *)PyBytes_AS_STRING(values);
                for (Py_ssize_t i = 0; i <= n; i++) o[i] = (int32_t)offsets[f][i];
            }
            Py_SETREF(text, PyBytes_FromStringAndSize((const char *)column[f].buf, (Py_ssize_t)column[f].len));
        } else {
            values = PyBytes_FromStringAndSize((const char *)column[f].buf, 8 * n);
        }
        if (nulls[f]) Py_SETREF(mask, PyBytes_FromStringAndSize((const char *)valid[f], n));
        PyObject *entry = values && text && mask ? PyTuple_Pack(3, values, text, mask) : NULL;
        Py_XDECREF(values);
        Py_XDECREF(text);
        Py_XDECREF(mask);
        if (entry == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, f, entry);
    }
done:
    for (Py_ssize_t f = 0; f < JSON_MAX_COLUMNS; f++) {
        PyMem_RawFree(column[f].buf);
        PyMem_RawFree(offsets[f]);
        PyMem_RawFree(valid[f]);
    }
    Py_XDECREF(names);
    PyBuffer_Release(&data);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&kinds);
    return result;
}

/* sum_rows(indptr, indices, data, rows, weights, out): out (float32, writable) set to the sum
 * of a CSR matrix's rows (int64 positions), each times its weight (float32, or None for 1),
 * added row after row in each row's stored order: what numpy's add.at over the same values
 * gives (training.recommender._sum_rows), each product rounded to float32 before its sum.
 * indptr, indices: int32; data: float32. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static PyObject *sum_rows(PyObject *self, PyObject *args) {
    Py_buffer indptr, indices, data, rows, weights = {0}, out;
    PyObject *weights_obj;
    if (!PyArg_ParseTuple(args, "y*y*y*y*Ow*", &indptr, &indices, &data, &rows, &weights_obj, &out)) return NULL;
    PyObject *result = NULL;
    int has_weights = weights_obj != Py_None;
    if (has_weights && PyObject_GetBuffer(weights_obj, &weights, PyBUF_SIMPLE) < 0) goto release;
    Py_ssize_t n_rows = indptr.len / 4 - 1, n_rows_wanted = rows.len / 8, n_cols = out.len / 4;
    Py_ssize_t nnz = indices.len / 4;
    const int32_t *ptr = (const int32_t *)indptr.buf, *col = (const int32_t *)indices.buf;
    const float *value = (const float *)data.buf, *w = has_weights ? (const float *)weights.buf : NULL;
    const int64_t *row = (const int64_t *)rows.buf;
    float *o = (float *)out.buf;
    if (indptr.len % 4 || n_rows < 0 || indices.len % 4 || data.len != indices.len || rows.len % 8 || out.len % 4 ||
        (has_weights && weights.len != 4 * n_rows_wanted) || ptr[n_rows] > nnz) {
        PyErr_SetString(PyExc_ValueError,
                        "sum_rows: int32 indptr and indices, float32 data, int64 rows, float32 weights (one per row) "
                        "or None, float32 out");
        goto done;
    }
    for (Py_ssize_t r = 0; r < n_rows_wanted; r++) {
        if (row[r] < 0 || row[r] >= n_rows || ptr[row[r]] < 0 || ptr[row[r]] > ptr[row[r] + 1] || ptr[row[r] + 1] > nnz) {
            PyErr_Format(PyExc_ValueError, "sum_rows: rows[%zd] = %lld is not a row of the matrix", r, (long long)row[r]);
            goto done;
        }
        for (int32_t j = ptr[row[r]]; j < ptr[row[r] + 1]; j++) {
            if (col[j] < 0 || col[j] >= n_cols) {
                PyErr_Format(PyExc_ValueError, "sum_rows: column %d is outside out (%zd)", col[j], n_cols);
                goto done;
            }
        }
    }
    for (Py_ssize_t c = 0; c < n_cols; c++) o[c] = 0.0f;
    for (Py_ssize_t r = 0; r < n_rows_wanted; r++) {
        const float weight = w ? w[r] : 1.0f;
        for (int32_t j = ptr[row[r]]; j < ptr[row[r] + 1]; j++) {
            const float v = w ? value[j] * weight : value[j];
            o[col[j]] += v;
        }
    }
    result = Py_NewRef(Py_None);
done:
    if (has_weights) PyBuffer_Release(&weights);
release:
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&indices);
    PyBuffer_Release(&data);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&out);
    return result;
}

static int position_order(const void *a, const void *b) {
    const int64_t x = ((const int64_t *)a)[0], y = ((const int64_t *)b)[0];
    return (x > y) - (x < y);
}

/* ranks_at(row, ordered, at) -> bytearray: the rank (int64, 1 = highest) of row[at[i]] among
 * the row's values: 1 + the values above it + the equal values at lower positions (the order
 * of a stable sort by descending value; training.recommender._ranks_at). row, ordered: float32
 * (ordered: the row sorted ascending, without NaN); at: int64 positions. */
static PyObject *ranks_at(PyObject *self, PyObject *args) {
    Py_buffer row_buf, ordered_buf, at_buf;
    if (!PyArg_ParseTuple(args, "y*y*y*", &row_buf, &ordered_buf, &at_buf)) return NULL;
    PyObject *result = NULL;
    int64_t *tied = NULL;
    float *distinct = NULL;
    Py_ssize_t n = row_buf.len / 4, m = at_buf.len / 8;
    const float *row = (const float *)row_buf.buf, *sorted = (const float *)ordered_buf.buf;
    const int64_t *at = (const int64_t *)at_buf.buf;
    if (row_buf.len % 4 || ordered_buf.len != row_buf.len || at_buf.len % 8) {
        PyErr_SetString(PyExc_ValueError, "ranks_at: float32 row and ordered of one length, int64 at");
        goto done;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        if (at[i] < 0 || at[i] >= n) {
            PyErr_Format(PyExc_ValueError, "ranks_at: at[%zd] = %lld is outside the row", i, (long long)at[i]);
            goto done;
        }
    }
    result = PyByteArray_FromStringAndSize(NULL, 8 * m);  /* writable, as numpy's ranks are */
    tied = (int64_t *)PyMem_Malloc(sizeof(int64_t) * 2 * (m > 0 ? m : 1));
    distinct = (float *)PyMem_Malloc(sizeof(float) * (m > 0 ? m : 1));
    if (result == NULL || tied == NULL || distinct == NULL) {
        Py_CLEAR(result);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    int64_t *rank = (int64_t *)PyByteArray_AS_STRING(result);
    Py_ssize_t n_tied = 0, n_distinct = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        const float v = row[at[i]];
        Py_ssize_t lo = 0, hi = n;  /* the first position whose value is above v */
        while (lo < hi) {
            Py_ssize_t mid = lo + (hi - lo) / 2;
            if (sorted[mid] <= v) lo = mid + 1; else hi = mid;
        }
        Py_ssize_t above = lo;
        lo = 0, hi = above;  /* the first position whose value is v */
        while (lo < hi) {
            Py_ssize_t mid = lo + (hi - lo) / 2;
            if (sorted[mid] < v) lo = mid + 1; else hi = mid;
        }
        rank[i] = (int64_t)(n - above + 1);
        if (above - lo > 1) {  /* equal values elsewhere: those at lower positions rank first */
            tied[2 * n_tied] = at[i];
            tied[2 * n_tied + 1] = i;
            n_tied++;
            Py_ssize_t d = 0;
            while (d < n_distinct && distinct[d] != v) d++;
            if (d == n_distinct) distinct[n_distinct++] = v;
        }
    }
    if (n_tied) {
        /* One pass over the row up to the last tied position, counting each tied value. */
        qsort(tied, (size_t)n_tied, 2 * sizeof(int64_t), position_order);
        int64_t *seen = (int64_t *)PyMem_Calloc((size_t)n_distinct, sizeof(int64_t));
        if (seen == NULL) {
            Py_CLEAR(result);
            PyErr_NoMemory();
            goto done;
        }
        Py_ssize_t next = 0;
        for (Py_ssize_t j = 0; next < n_tied; j++) {
            const float v = row[j];
            Py_ssize_t d = 0;
            while (d < n_distinct && distinct[d] != v) d++;
            while (next < n_tied && tied[2 * next] == j) {  /* seen[d]: the equal values before j */
                rank[tied[2 * next + 1]] += seen[d];
                next++;
            }
            if (d < n_distinct) seen[d]++;
        }
        PyMem_Free(seen);
    }
done:
    PyMem_Free(tied);
    PyMem_Free(distinct);
    PyBuffer_Release(&row_buf);
    PyBuffer_Release(&ordered_buf);
    PyBuffer_Release(&at_buf);
    return result;
}

/* tree_margins(splits, leaves, depth, x, n_features, out): add to out[r] (float32, writable;
 * holds each row's starting margin) the leaf value of every tree for row r of x (float32, rows
 * x n_features, C order), tree after tree, each sum rounded to float32: what XGBoost's CPU
 * predictor gives for numerical splits (training.trees). Every tree is complete to ``depth``
 * (a leaf above it repeated under a split whose way does not matter), so a walk takes
 * ``depth`` steps without a branch on the data: splits, 2^depth - 1 per tree in breadth-first
 * order (node i's children at 2i + 1 and 2i + 2), each a struct tree_split; leaves: float32,
 * 2^depth per tree. A value goes left when less than the split value, and a missing value
 * (NaN) where the split's top feature bit says (set: left). */
struct tree_split {
    uint32_t feature; /* bit 31: missing values go left */
    float threshold;
};

#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static PyObject *tree_margins(PyObject *self, PyObject *args) {
    Py_buffer splits_buf, leaves_buf, x_buf, out_buf;
    int depth;
    Py_ssize_t n_features;
    if (!PyArg_ParseTuple(args, "y*y*iy*nw*", &splits_buf, &leaves_buf, &depth, &x_buf, &n_features, &out_buf))
        return NULL;
    PyObject *result = NULL;
    if (depth < 1 || depth > 16 || n_features < 1 || splits_buf.len % (Py_ssize_t)sizeof(struct tree_split) ||
        leaves_buf.len % 4 || out_buf.len % 4) {
        PyErr_SetString(PyExc_ValueError,
                        "tree_margins: 8-byte splits, float32 leaves, depth 1 to 16, float32 x of len(out) rows of "
                        "n_features, float32 out");
        goto done;
    }
    const Py_ssize_t per_tree = ((Py_ssize_t)1 << depth) - 1, n_rows = out_buf.len / 4;
    const Py_ssize_t n_trees = splits_buf.len / (Py_ssize_t)sizeof(struct tree_split) / per_tree;
    const struct tree_split *splits = (const struct tree_split *)splits_buf.buf;
    const float *leaves = (const float *)leaves_buf.buf, *x = (const float *)x_buf.buf;
    float *out = (float *)out_buf.buf;
    if (splits_buf.len != n_trees * per_tree * (Py_ssize_t)sizeof(struct tree_split) ||
        leaves_buf.len != 4 * n_trees * (per_tree + 1) || x_buf.len != 4 * n_rows * n_features) {
        PyErr_SetString(PyExc_ValueError,
                        "tree_margins: 2^depth - 1 splits and 2^depth leaves per tree, x of len(out) rows of "
                        "n_features");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_trees * per_tree; i++) {
        if ((Py_ssize_t)(splits[i].feature & 0x7fffffffu) >= n_features) {
            PyErr_Format(PyExc_ValueError, "tree_margins: split %zd is on a feature x does not have", i);
            goto done;
        }
    }
    /* A block of rows through one tree at a time, as XGBoost's predictor goes (the tree stays in
     * cache); each row's sum still takes the trees in order. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t lo = 0; lo < n_rows; lo += 64) {
        const Py_ssize_t hi = lo + 64 < n_rows ? lo + 64 : n_rows;
        for (Py_ssize_t t = 0; t < n_trees; t++) {
            const struct tree_split *tree = splits + t * per_tree;
            const float *leaf = leaves + t * (per_tree + 1);
            /* Eight rows walk side by side: one walk is a chain of dependent loads, and eight
             * independent chains keep the core busy while each waits. */
            for (Py_ssize_t r0 = lo; r0 < hi; r0 += 8) {
                const int group = hi - r0 < 8 ? (int)(hi - r0) : 8;
                Py_ssize_t node[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int level = 0; level < depth; level++) {
                    for (int j = 0; j < group; j++) {
                        const struct tree_split split = tree[node[j]];
                        const float value = x[(r0 + j) * n_features + (split.feature & 0x7fffffffu)];
                        const int left = value != value ? (int)(split.feature >> 31) : value < split.threshold;
                        node[j] = 2 * node[j] + 2 - left;
                    }
                }
                for (int j = 0; j < group; j++) out[r0 + j] += leaf[node[j] - per_tree];
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&splits_buf);
    PyBuffer_Release(&leaves_buf);
    PyBuffer_Release(&x_buf);
    PyBuffer_Release(&out_buf);
    return result;
}

/* vae_person(params, layout, dims, items, actions, platforms, buckets, bag, logits, mu, attention):
 * the trained attention-VAE's eval-mode encoder and decoder for one person's events, what
 * training.vae_numpy.NumpyVAE computes in numpy (NumpyVAE._pack packs the
 * weights). params: every float32 weight, layout: int64 offsets of each array in params (the
 * order of VAE_* below), dims: int64 d_model, n_heads, n_layers, d_ff, d_bag, d_latent,
 * d_hidden, n_items, n_vocab (encoder item vocabulary), n_actions, n_platforms, n_gaps. items,
 * actions, platforms, buckets: int64 indices of the person's events (no padding); bag: int64
 * encoder indices of the items of the bag branch (no padding, no unknown). Outputs: logits
 * (n_items), mu (d_latent) and attention (one weight per event), float32. Each person's
 * outputs depend on that person's inputs alone, in a fixed order of operations: the same bits
 * whoever shares the service's batch. Sums run in index order, without fused multiply-adds. */
enum {
    VAE_ITEM, VAE_ACTION, VAE_PLATFORM, VAE_GAP, VAE_EMBED_NORM_W, VAE_EMBED_NORM_B,
    VAE_QUERY, VAE_KEY, VAE_KEY_B, VAE_BAG, VAE_MU, VAE_MU_B, VAE_HIDDEN, VAE_HIDDEN_B,
    VAE_LOGITS, VAE_LOGITS_B, VAE_FIXED
};
enum {
    VAE_L_NORM1_W, VAE_L_NORM1_B, VAE_L_QKV, VAE_L_QKV_B, VAE_L_OUT, VAE_L_OUT_B, VAE_L_NORM2_W,
    VAE_L_NORM2_B, VAE_L_FF1, VAE_L_FF1_B, VAE_L_FF2, VAE_L_FF2_B, VAE_PER_LAYER
};
#define VAE_MAX_EVENTS 4096
/* On x86-64, the loops below are also built for AVX2 and chosen at load time (no FMA: the same
 * arithmetic, so the same bits, on either). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VAE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VAE_CLONES
#endif
#define VAE_MAX_WIDTH 4096

/* out (rows x m) = x (rows x k) @ w (k x m, row-major) + b (m): each output the sum over k in
 * index order (vectorised across outputs, which leaves each one's sum as it is). */
VAE_CLONES static void vae_linear(const float *restrict x, Py_ssize_t rows, Py_ssize_t k, const float *restrict w,
                                  const float *restrict b, Py_ssize_t m, float *restrict out) {
    for (Py_ssize_t i = 0; i < rows; i++) {
        float *restrict o = out + i * m;
        for (Py_ssize_t j = 0; j < m; j++) o[j] = 0.0f;
        for (Py_ssize_t c = 0; c < k; c++) {
            const float v = x[i * k + c];
            const float *restrict wc = w + c * m;
            for (Py_ssize_t j = 0; j < m; j++) o[j] += v * wc[j];
        }
        for (Py_ssize_t j = 0; j < m; j++) o[j] += b[j];
    }
}

static void vae_layer_norm(const float *x, Py_ssize_t rows, Py_ssize_t d, const float *w, const float *b,
                           float *out) {
    for (Py_ssize_t i = 0; i < rows; i++) {
        const float *r = x + i * d;
        float *o = out + i * d, mean = 0.0f, var = 0.0f;
        for (Py_ssize_t j = 0; j < d; j++) mean += r[j];
        mean /= (float)d;
        for (Py_ssize_t j = 0; j < d; j++) {
            const float c = r[j] - mean;
            var += c * c;
        }
        var /= (float)d;
        const float root = sqrtf(var + 1e-5f);
        for (Py_ssize_t j = 0; j < d; j++) o[j] = (r[j] - mean) / root * w[j] + b[j];
    }
}

/* e^x for x <= 0 (softmax's inputs once their maximum is taken off), as Cephes' expf: x = k ln 2 + r
 * with |r| <= ln 2 / 2, e^r by its minimax polynomial, 2^k into the exponent (about 1 ulp;
 * libm's expf, a call per value, was most of a person's time). Below -87, 0. Branch-free, so
 * that the loop over a row vectorises. */
static inline float vae_exp(float x) {
    const float k = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    const int32_t e = (int32_t)(k > -126.0f ? k : -126.0f) + 127;
    float scale;
    const int32_t bits = e << 23;
    memcpy(&scale, &bits, 4);
    return x >= -87.0f ? y * scale : 0.0f;
}

VAE_CLONES static void vae_softmax(float *restrict x, Py_ssize_t n) {
    float top = x[0], sum = 0.0f;
    for (Py_ssize_t j = 1; j < n; j++) top = x[j] > top ? x[j] : top;
    for (Py_ssize_t j = 0; j < n; j++) x[j] = vae_exp(x[j] - top);
    for (Py_ssize_t j = 0; j < n; j++) sum += x[j];
    for (Py_ssize_t j = 0; j < n; j++) x[j] /= sum;
}

static PyObject *vae_person(PyObject *self, PyObject *args) {
    Py_buffer params_buf, layout_buf, dims_buf, items_buf, actions_buf, platforms_buf, buckets_buf, bag_buf;
    Py_buffer logits_buf, mu_buf, attention_buf;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*w*w*w*", &params_buf, &layout_buf, &dims_buf, &items_buf,
                          &actions_buf, &platforms_buf, &buckets_buf, &bag_buf, &logits_buf, &mu_buf, &attention_buf))
        return NULL;
    PyObject *result = NULL;
    float *work = NULL;
    const float *p = (const float *)params_buf.buf;
    const int64_t *at = (const int64_t *)layout_buf.buf, *dims = (const int64_t *)dims_buf.buf;
    const int64_t *items = (const int64_t *)items_buf.buf, *actions = (const int64_t *)actions_buf.buf;
    const int64_t *platforms = (const int64_t *)platforms_buf.buf, *buckets = (const int64_t *)buckets_buf.buf;
    const int64_t *bag = (const int64_t *)bag_buf.buf;
    const Py_ssize_t n = items_buf.len / 8, n_bag = bag_buf.len / 8;
    if (dims_buf.len != 12 * 8) {
        PyErr_SetString(PyExc_ValueError, "vae_person: 12 int64 dims");
        goto done;
    }
    const Py_ssize_t d = dims[0], heads = dims[1], layers = dims[2], d_ff = dims[3], d_bag = dims[4];
    const Py_ssize_t d_latent = dims[5], d_hidden = dims[6], n_items = dims[7], n_vocab = dims[8];
    const Py_ssize_t n_actions = dims[9], n_platforms = dims[10], n_gaps = dims[11];
    const Py_ssize_t n_offsets = VAE_FIXED + VAE_PER_LAYER * layers;
    int ok = d > 0 && heads > 0 && d % heads == 0 && layers >= 0 && d_ff > 0 && d_bag >= 0 && d_latent > 0 &&
             d_hidden > 0 && n_items > 0 && d <= VAE_MAX_WIDTH && d_ff <= VAE_MAX_WIDTH && d_bag <= VAE_MAX_WIDTH &&
             d_latent <= VAE_MAX_WIDTH && d_hidden <= VAE_MAX_WIDTH && n <= VAE_MAX_EVENTS &&
             layout_buf.len == 8 * n_offsets && actions_buf.len == items_buf.len &&
             platforms_buf.len == items_buf.len && buckets_buf.len == items_buf.len && logits_buf.len == 4 * n_items &&
             mu_buf.len == 4 * d_latent && attention_buf.len == 4 * n;
    /* Every array's extent inside params. */
    const Py_ssize_t d_pooled = d + d_bag, total = params_buf.len / 4;
    Py_ssize_t size[VAE_FIXED] = {n_vocab * d, n_actions * d, n_platforms * d, n_gaps * d, d, d, d, d * d, d,
                                  n_vocab * d_bag, d_pooled * d_latent, d_latent, d_latent * d_hidden, d_hidden,
                                  d_hidden * n_items, n_items};
    for (Py_ssize_t i = 0; ok && i < VAE_FIXED; i++) ok = at[i] >= 0 && at[i] + size[i] <= total;
    for (Py_ssize_t l = 0; ok && l < layers; l++) {
        const Py_ssize_t s[VAE_PER_LAYER] = {d, d, d * 3 * d, 3 * d, d * d, d, d, d, d * d_ff, d_ff, d_ff * d, d};
        for (Py_ssize_t i = 0; ok && i < VAE_PER_LAYER; i++) {
            const int64_t o = at[VAE_FIXED + VAE_PER_LAYER * l + i];
            ok = o >= 0 && o + s[i] <= total;
        }
    }
    for (Py_ssize_t t = 0; ok && t < n; t++)
        ok = items[t] >= 0 && items[t] < n_vocab && actions[t] >= 0 && actions[t] < n_actions && platforms[t] >= 0 &&
             platforms[t] < n_platforms && buckets[t] >= 0 && buckets[t] < n_gaps;
    for (Py_ssize_t t = 0; ok && t < n_bag; t++) ok = bag[t] >= 0 && bag[t] < n_vocab;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "vae_person: dims, layout, indices or output sizes do not fit");
        goto done;
    }
    /* x, h (n x d), qkv (n x 3d), ff (n x d_ff), scores (n), pooled (d_pooled), hidden */
    const Py_ssize_t rows = n > 0 ? n : 1;
    const Py_ssize_t width = rows * (3 * d + 3 * d + d_ff) + 2 * rows + d_pooled + d_hidden + d;
    work = (float *)PyMem_RawMalloc(sizeof(float) * (size_t)width);
    if (work == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    float *logits = (float *)logits_buf.buf, *mu = (float *)mu_buf.buf, *attention = (float *)attention_buf.buf;
    Py_BEGIN_ALLOW_THREADS
    float *x = work, *h = x + rows * d, *qkv = h + rows * d, *ff = qkv + rows * 3 * d, *scores = ff + rows * d_ff;
    float *pooled = scores + rows, *hidden = pooled + d_pooled, *keyed = hidden + d_hidden;
    float *keys = keyed + d, *zeros = keys + rows * d;
    for (Py_ssize_t j = 0; j < rows; j++) zeros[j] = 0.0f;
    const Py_ssize_t dk = d / heads;
    for (Py_ssize_t j = 0; j < d_pooled; j++) pooled[j] = 0.0f;
    if (n > 0) {
        for (Py_ssize_t t = 0; t < n; t++) {
            const float *a = p + at[VAE_ITEM] + items[t] * d, *b = p + at[VAE_ACTION] + actions[t] * d;
            const float *c = p + at[VAE_PLATFORM] + platforms[t] * d, *g = p + at[VAE_GAP] + buckets[t] * d;
            for (Py_ssize_t j = 0; j < d; j++) h[t * d + j] = a[j] + b[j] + c[j] + g[j];
        }
        vae_layer_norm(h, n, d, p + at[VAE_EMBED_NORM_W], p + at[VAE_EMBED_NORM_B], x);
        const float scale = 1.0f / sqrtf((float)dk);
        for (Py_ssize_t l = 0; l < layers; l++) {
            const int64_t *w = at + VAE_FIXED + VAE_PER_LAYER * l;
            vae_layer_norm(x, n, d, p + w[VAE_L_NORM1_W], p + w[VAE_L_NORM1_B], h);
            vae_linear(h, n, d, p + w[VAE_L_QKV], p + w[VAE_L_QKV_B], 3 * d, qkv);
            for (Py_ssize_t head = 0; head < heads; head++) {
                const Py_ssize_t q0 = head * dk, k0 = d + head * dk, v0 = 2 * d + head * dk;
                for (Py_ssize_t c = 0; c < dk; c++) /* this head's keys, transposed (dk x n) */
                    for (Py_ssize_t j = 0; j < n; j++) keys[c * n + j] = qkv[j * 3 * d + k0 + c];
                for (Py_ssize_t i = 0; i < n; i++) {
                    vae_linear(qkv + i * 3 * d + q0, 1, dk, keys, zeros, n, scores);
                    for (Py_ssize_t j = 0; j < n; j++) scores[j] *= scale;
                    vae_softmax(scores, n);
                    float *o = h + i * d + head * dk; /* h is free again: the heads' outputs */
                    for (Py_ssize_t c = 0; c < dk; c++) o[c] = 0.0f;
                    for (Py_ssize_t j = 0; j < n; j++)
                        for (Py_ssize_t c = 0; c < dk; c++) o[c] += scores[j] * qkv[j * 3 * d + v0 + c];
                }
            }
            vae_linear(h, n, d, p + w[VAE_L_OUT], p + w[VAE_L_OUT_B], d, qkv);
            for (Py_ssize_t i = 0; i < n * d; i++) x[i] += qkv[i];
            vae_layer_norm(x, n, d, p + w[VAE_L_NORM2_W], p + w[VAE_L_NORM2_B], h);
            vae_linear(h, n, d, p + w[VAE_L_FF1], p + w[VAE_L_FF1_B], d_ff, ff);
            for (Py_ssize_t i = 0; i < n * d_ff; i++) ff[i] = ff[i] > 0.0f ? ff[i] : 0.0f;
            vae_linear(ff, n, d_ff, p + w[VAE_L_FF2], p + w[VAE_L_FF2_B], d, qkv);
            for (Py_ssize_t i = 0; i < n * d; i++) x[i] += qkv[i];
        }
        /* Attention pooling with the learned query. */
        const float *query = p + at[VAE_QUERY];
        const float root = sqrtf((float)d);
        for (Py_ssize_t t = 0; t < n; t++) {
            vae_linear(x + t * d, 1, d, p + at[VAE_KEY], p + at[VAE_KEY_B], d, keyed);
            float s = 0.0f;
            for (Py_ssize_t j = 0; j < d; j++) s += keyed[j] * query[j];
            scores[t] = s / root;
        }
        vae_softmax(scores, n);
        for (Py_ssize_t t = 0; t < n; t++) {
            attention[t] = scores[t];
            for (Py_ssize_t j = 0; j < d; j++) pooled[j] += scores[t] * x[t * d + j];
        }
    }
    if (d_bag > 0) {
        float *summed = pooled + d;
        for (Py_ssize_t t = 0; t < n_bag; t++) {
            const float *row = p + at[VAE_BAG] + bag[t] * d_bag;
            for (Py_ssize_t j = 0; j < d_bag; j++) summed[j] += row[j];
        }
        const float norm = sqrtf((float)(n_bag > 1 ? n_bag : 1));
        for (Py_ssize_t j = 0; j < d_bag; j++) summed[j] = tanhf(summed[j] / norm);
    }
    vae_linear(pooled, 1, d_pooled, p + at[VAE_MU], p + at[VAE_MU_B], d_latent, mu);
    vae_linear(mu, 1, d_latent, p + at[VAE_HIDDEN], p + at[VAE_HIDDEN_B], d_hidden, hidden);
    for (Py_ssize_t j = 0; j < d_hidden; j++) hidden[j] = tanhf(hidden[j]);
    vae_linear(hidden, 1, d_hidden, p + at[VAE_LOGITS], p + at[VAE_LOGITS_B], n_items, logits);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(work);
    PyBuffer_Release(&params_buf);
    PyBuffer_Release(&layout_buf);
    PyBuffer_Release(&dims_buf);
    PyBuffer_Release(&items_buf);
    PyBuffer_Release(&actions_buf);
    PyBuffer_Release(&platforms_buf);
    PyBuffer_Release(&buckets_buf);
    PyBuffer_Release(&bag_buf);
    PyBuffer_Release(&logits_buf);
    PyBuffer_Release(&mu_buf);
    PyBuffer_Release(&attention_buf);
    return result;
}

static PyMethodDef METHODS[] = {
    {"blake2b_128_joined", blake2b_128_joined, METH_VARARGS,
     "blake2b_128_joined(fields, separator, null) -> bytes: BLAKE2b-128 of each row's fields joined."},
    {"vae_person", vae_person, METH_VARARGS,
     "vae_person(params, layout, dims, items, actions, platforms, buckets, bag, logits, mu, attention): the "
     "attention-VAE's eval-mode forward pass for one person's events."},
    {"hash64", hash64, METH_VARARGS,
     "hash64(data, offsets) -> bytes: a 64-bit hash (native-endian) of each data[offsets[i]:offsets[i+1]]."},
    {"hmac_sha256", hmac_sha256, METH_VARARGS,
     "hmac_sha256(key, prefix, data, offsets, width, portable=False) -> bytes: HMAC-SHA256(key, prefix + s)[:width] "
     "of each range."},
    {"first_appearance", first_appearance, METH_VARARGS,
     "first_appearance(indices, valid, size[, starts]) -> (indices, used[, ends]): int32 dictionary indices "
     "renumbered by first appearance (each run from a start on its own)."},
    {"repeated64", repeated64, METH_VARARGS,
     "repeated64(hashes, rows) -> bytes: 1 for each of the rows whose uint64 hash another of them has."},
    {"json_lines", json_lines, METH_VARARGS,
     "json_lines(data, starts, ends, names, kinds) -> list | None: the JSON object lines' values as columns, or "
     "None for lines beyond the plain subset it reads exactly as pyarrow.json does."},
    {"sum_rows", sum_rows, METH_VARARGS,
     "sum_rows(indptr, indices, data, rows, weights, out) -> None: out = the weighted sum of a float32 CSR "
     "matrix's rows, in stored order."},
    {"ranks_at", ranks_at, METH_VARARGS,
     "ranks_at(row, ordered, at) -> bytearray: int64 rank (1 = highest, ties by position) of row[at[i]] in a float32 row."},
    {"tree_margins", tree_margins, METH_VARARGS,
     "tree_margins(splits, leaves, depth, x, n_features, out) -> None: out[r] += "
     "every tree's leaf value for row r of x, in tree order (XGBoost's CPU predictor, numerical splits)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, METHODS};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&MODULE); }
