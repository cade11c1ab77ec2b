/* Fused CPU kernels for the ALS sweep (mfrec/als.py, mfrec/native.py).
 *
 * The torch steps in als.py build each system from whole-array operations: every
 * operation streams an (entries x rows) array through memory, ~50 of them per step. Here
 * each row's system is summed, assembled, factorised and solved while it sits in L1,
 * which is the difference between a memory-bound and a compute-bound sweep on a CPU.
 * The mathematics and the table layouts are those of als.py, which stays the reference
 * (and the path for GPUs and torch.distributed); tests check both agree. Fold-in of new
 * customers at serving time runs the user step's two kernels too (als._native_users).
 *
 * Called through ctypes (which releases the GIL), so rows can be split over threads.
 * `pip install` builds it as the extension module mfrec._native (the module init only
 * makes the file importable, which is how mfrec finds it); mfrec/native.py compiles it as a
 * plain shared library (MFREC_NO_PYTHON) when that build is missing or stale.
 */
#ifndef MFREC_NO_PYTHON
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The hot loops are compiled for AVX-512 and AVX2 as well as the baseline, picked at load
 * time (GCC and clang on x86-64); elsewhere they are compiled once for the baseline. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef HOT
#define HOT
#endif

typedef struct {
    const int32_t *crow;  /* n_rows + 1 offsets (already relative to cols/codes) */
    const void *cols;     /* int32, or uint16 when cols_u16 */
    int cols_u16;
    const void *codes;    /* float32 ratings, or uint8 codes times scale when codes_u8 */
    int codes_u8;
    float scale;
} csr_t;

static inline int64_t col_at(const csr_t *m, int64_t j) {
    return m->cols_u16 ? (int64_t)((const uint16_t *)m->cols)[j] : (int64_t)((const int32_t *)m->cols)[j];
}

static inline float rating_at(const csr_t *m, int64_t j) {
    return m->codes_u8 ? ((const uint8_t *)m->codes)[j] * m->scale : ((const float *)m->codes)[j];
}

/* Sum over the entries j0..j1 of a CSR row of the table rows they point at into out.
 * Table rows are `stride` floats, a multiple of BLOCK (callers pad them), summed BLOCK
 * columns at a time: eight vector accumulators that stay in registers (a running sum
 * stored and reloaded per rating is bound by the add's latency, ~4x slower). */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
#define BLOCK 64
HOT static void sum_rows(const csr_t *m, int64_t j0, int64_t j1, const float *table, int64_t stride,
                         float *out) {
    for (int64_t t0 = 0; t0 < stride; t0 += BLOCK) {
        v8 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0}, acc4 = {0}, acc5 = {0}, acc6 = {0}, acc7 = {0};
        for (int64_t j = j0; j < j1; j++) {
            const v8 *row = (const v8 *)(table + col_at(m, j) * stride + t0);
            acc0 += row[0];
            acc1 += row[1];
            acc2 += row[2];
            acc3 += row[3];
            acc4 += row[4];
            acc5 += row[5];
            acc6 += row[6];
            acc7 += row[7];
        }
        v8 *dst = (v8 *)(out + t0);
        dst[0] = acc0;
        dst[1] = acc1;
        dst[2] = acc2;
        dst[3] = acc3;
        dst[4] = acc4;
        dst[5] = acc5;
        dst[6] = acc6;
        dst[7] = acc7;
    }
}

static inline int64_t padded(int width) { return (width + BLOCK - 1) / BLOCK * BLOCK; }

/* Floats of a table row before padding. Item step (one row per user): packed
 * p p^T + s c c^T, p, [c,] 1. User step (one row per item): packed (q, 1)(q, 1)^T, [q (w1 - s d)]. */
static inline int item_width(int k, int implicit) { return k * (k + 1) / 2 + (implicit ? 2 * k : k) + 1; }
static inline int user_width(int k, int implicit) { return (k + 1) * (k + 2) / 2 + (implicit ? k : 0); }

/* What one row's system needs from its ratings (entries j0..j1): the sum of the table rows
 * they point at (into sums) and, with residuals z = rating - mu - col_bias, the sums of
 * z * (factors, 1) over them (into rhs, k + 1 floats, zeroed by the caller). Returns the
 * sum of z^2. */
HOT static double row_sums(const csr_t *m, int64_t j0, int64_t j1, const float *table, int64_t stride,
                           const float *factors, const float *col_bias, float mu, int k, float *sums, float *rhs) {
    sum_rows(m, j0, j1, table, stride, sums);
    double sq = 0.0;
    for (int64_t j = j0; j < j1; j++) {
        int64_t col = col_at(m, j);
        float z = rating_at(m, j) - mu - col_bias[col];
        const float *f = factors + col * k;
        for (int64_t a = 0; a < k; a++) rhs[a] += z * f[a];
        rhs[k] += z;
        sq += (double)z * z;
    }
    return sq;
}

/* Rows are solved in groups of G, batch last (entry-major, G lanes per entry): every loop of
 * the elimination then runs over the G lanes, which the compiler vectorises, instead of a
 * chain of dependent scalar operations per system (a row-at-a-time Cholesky took 3.8 ms for
 * ml-latest-small's 9k film systems, latency-bound). A group's systems fit in L1. */
#define G 16

/* Gaussian elimination without pivoting (SPD systems) of G systems: A is D x D x G (the
 * upper triangles are read; the lower ones are not touched), x is D x G and receives the
 * solutions. A lane whose system is not positive definite gets NaN. Returns how many of
 * the first n lanes (the rows in use; the others hold whatever the caller left) did. */
static inline __attribute__((always_inline)) int solve_body(float *A, float *x, int64_t D, int n) {
    for (int64_t j = 0; j < D; j++) {
        const float *pivot = A + (j * D + j) * G;
        for (int64_t i = j + 1; i < D; i++) {
            float factor[G];
            const float *aji = A + (j * D + i) * G;
            for (int64_t g = 0; g < G; g++) factor[g] = aji[g] / pivot[g];
            for (int64_t l = i; l < D; l++) {
                float *ail = A + (i * D + l) * G;
                const float *ajl = A + (j * D + l) * G;
                for (int64_t g = 0; g < G; g++) ail[g] -= factor[g] * ajl[g];
            }
            float *xi = x + i * G;
            const float *xj = x + j * G;
            for (int64_t g = 0; g < G; g++) xi[g] -= factor[g] * xj[g];
        }
    }
    int bad = 0;
    for (int64_t g = 0; g < G; g++) {
        int ok = 1;
        for (int64_t j = 0; j < D; j++) ok &= A[(j * D + j) * G + g] > 0;  /* false for NaN too */
        if (!ok) {
            bad += g < n;
            for (int64_t j = 0; j < D; j++) A[(j * D + j) * G + g] = NAN;
        }
    }
    for (int64_t j = D - 1; j >= 0; j--) {
        float *xj = x + j * G;
        const float *ajj = A + (j * D + j) * G;
        for (int64_t g = 0; g < G; g++) xj[g] /= ajj[g];
        for (int64_t i = 0; i < j; i++) {
            float *xi = x + i * G;
            const float *aij = A + (i * D + j) * G;
            for (int64_t g = 0; g < G; g++) xi[g] -= aij[g] * xj[g];
        }
    }
    return bad;
}

/* solve_body with D a constant for the sizes k = 8 gives (item step 10, user step 9 and 8),
 * so the compiler unrolls and schedules them: the same operations in the same order, so the
 * same numbers as the general loop. (Loop indices here are 64-bit throughout: with 32-bit
 * ones, under the -fwrapv in Python's build flags, the general solve ran at about half
 * speed for k = 16-32 and the other loops 5-10 % slower.) */
HOT static int solve_group(float *A, float *x, int D, int n) {
    switch (D) {
    case 8: return solve_body(A, x, 8, n);
    case 9: return solve_body(A, x, 9, n);
    case 10: return solve_body(A, x, 10, n);
    default: return solve_body(A, x, D, n);
    }
}

/* Row-wise packed upper triangle of x x^T (x of length n) added times s into out. */
static inline void packed_outer_add(float *out, const float *x, int n, float s) {
    int e = 0;
    for (int64_t a = 0; a < n; a++) {
        float xa = s * x[a];
        for (int64_t b = a; b < n; b++) out[e++] += xa * x[b];
    }
}

/* Counting sort of n ratings into CSR order (als.Csr): entry j goes to slot next[rows[j]]++,
 * so each row keeps its ratings in input order (what a stable sort by row gives). Columns
 * are written as int32 or uint16 (cols_u16), ratings as float32 or one-byte codes (codes_u8),
 * both divided by scale. */
void mfrec_csr_fill(int64_t n, const int32_t *rows, const int32_t *cols, const float *ratings, int64_t *next,
                    void *out_cols, int cols_u16, void *out_codes, int codes_u8, float scale) {
    for (int64_t j = 0; j < n; j++) {
        int64_t d = next[rows[j]]++;
        if (cols_u16)
            ((uint16_t *)out_cols)[d] = (uint16_t)cols[j];
        else
            ((int32_t *)out_cols)[d] = cols[j];
        float code = ratings[j] / scale;
        if (codes_u8)
            ((uint8_t *)out_codes)[d] = (uint8_t)code;
        else
            ((float *)out_codes)[d] = code;
    }
}

/* Bumped with every change of an exported function's arguments: mfrec/native.py refuses a
 * build that does not match (a stale build from before a `git pull` would misread them). */
int64_t mfrec_abi_version(void) { return 2; }

/* sha256 of this file, prefix (mfrec/native.py): tells a build of other sources of this file. */
#ifndef MFREC_SOURCE_DIGEST
#define MFREC_SOURCE_DIGEST ""
#endif
const char *mfrec_source_digest(void) { return MFREC_SOURCE_DIGEST; }

/* Floats per row of the item-step table (side 0) or the user-step table (side 1) for k
 * factors: the width the table builds write, rounded up to sum_rows' block (the padding is
 * zero). Callers allocate the tables with it. */
int64_t mfrec_table_stride(int side, int k, int implicit) {
    return padded(side == 0 ? item_width(k, implicit) : user_width(k, implicit));
}

/* Item-step table, one row per user: packed p p^T + s c c^T, p, [c,] 1 (als.solve_items);
 * and `constant` (D x D, row-major), the part of every item's system that does not depend
 * on who rated it: the prior and, with the choice loss (implicit), w0 * sum over every user
 * of g g^T with g = (c, 0, 1) (als._item_constant). */
void mfrec_item_table(int64_t n_users, int k, int implicit, float s, float w0, float reg, float bias_reg,
                      const float *p, const float *c, float *table, float *constant) {
    int kk = k * (k + 1) / 2, width = item_width(k, implicit);
    int D = implicit ? k + 2 : k + 1;
    int64_t stride = padded(width);
    double *cc = calloc((size_t)k * k + k, sizeof(double)), *csum = cc + (size_t)k * k;
    for (int64_t u = 0; u < n_users; u++) {
        float *row = table + u * stride;
        const float *pu = p + u * k;
        memset(row, 0, sizeof(float) * stride);
        packed_outer_add(row, pu, k, 1.0f);
        memcpy(row + kk, pu, sizeof(float) * k);
        if (implicit) {
            const float *cu = c + u * k;
            packed_outer_add(row, cu, k, s);
            memcpy(row + kk + k, cu, sizeof(float) * k);
            if (cc) {
                for (int64_t a = 0; a < k; a++) {
                    csum[a] += cu[a];
                    for (int64_t b = a; b < k; b++) cc[a * k + b] += (double)cu[a] * cu[b];
                }
            }
        }
        row[width - 1] = 1.0f;
    }
    memset(constant, 0, sizeof(float) * D * D);
    for (int64_t a = 0; a < D; a++) constant[a * D + a] = a < k ? reg : bias_reg;
    if (implicit && cc) {
        for (int64_t a = 0; a < k; a++) {
            for (int64_t b = a; b < k; b++) {
                constant[a * D + b] += (float)(w0 * cc[a * k + b]);
                constant[b * D + a] = constant[a * D + b];
            }
            constant[a * D + k + 1] = constant[(k + 1) * D + a] = (float)(w0 * csum[a]);
        }
        constant[(k + 1) * D + k + 1] += (float)((double)w0 * n_users);
    }
    if (!cc) constant[0] = NAN;  /* out of memory: the sweep fails loudly */
    free(cc);
}

/* Item step for rows [lo, hi): per item, sum the table rows of its raters and the rating
 * residuals, assemble the D x D system from the sums by (source, scale) plus constant
 * (als._item_layout), solve, and write factors, rating bias and choice bias. Returns the
 * number of systems that were not positive definite (their solutions are NaN), or -1 when
 * out of memory. */
HOT int64_t mfrec_item_rows(const int32_t *crow, const void *cols, int cols_u16, const void *codes, int codes_u8,
                        float scale, const float *table, const float *p, const float *user_bias, float mu, int k,
                        int implicit, float w1, const int64_t *source, const float *entry_scale,
                        const float *constant, float *factors, float *bias, float *choice_bias, int64_t lo,
                        int64_t hi) {
    csr_t m = {crow, cols, cols_u16, codes, codes_u8, scale};
    int kk = k * (k + 1) / 2, width = item_width(k, implicit);
    int D = implicit ? k + 2 : k + 1;
    int64_t stride = padded(width);
    float *work = malloc(sizeof(float) * ((size_t)G * (stride + k + 1) + (size_t)(D * D + D) * G));
    if (!work) return -1;
    float *sums = work, *rhs = sums + G * stride, *A = rhs + G * (k + 1), *x = A + D * D * G;
    int64_t bad = 0;
    for (int64_t first = lo; first < hi; first += G) {
        int n = hi - first < G ? (int)(hi - first) : G;
        memset(sums, 0, sizeof(float) * G * stride);
        memset(rhs, 0, sizeof(float) * G * (k + 1));
        for (int64_t g = 0; g < n; g++)
            row_sums(&m, crow[first + g], crow[first + g + 1], table, stride, p, user_bias, mu, k,
                     sums + g * stride, rhs + g * (k + 1));
        for (int64_t a = 0; a < D; a++)  /* the upper triangle: all that solve_group reads */
            for (int64_t e = a * D + a; e < a * D + D; e++) {
                const float *col = sums + source[e];
                float sc = entry_scale[e], c0 = constant[e];
                for (int64_t g = 0; g < G; g++) A[e * G + g] = col[g * stride] * sc + c0;
            }
        for (int64_t a = 0; a <= k; a++)
            for (int64_t g = 0; g < G; g++) x[a * G + g] = rhs[g * (k + 1) + a];
        if (implicit) {
            for (int64_t a = 0; a < k; a++)
                for (int64_t g = 0; g < G; g++) x[a * G + g] += w1 * sums[g * stride + kk + k + a];
            for (int64_t g = 0; g < G; g++) x[(k + 1) * G + g] = w1 * sums[g * stride + width - 1];
        }
        bad += solve_group(A, x, D, n);  /* lanes past n solve the constant system, unused */
        for (int64_t g = 0; g < n; g++) {
            int64_t i = first + g;
            for (int64_t a = 0; a < k; a++) factors[i * k + a] = x[a * G + g];
            bias[i] = x[k * G + g];
            if (implicit) choice_bias[i] = x[(k + 1) * G + g];
        }
    }
    free(work);
    return bad;
}

/* User-step table, one row per item: packed (q, 1)(q, 1)^T, [q (w1 - s d),] (als.solve_users);
 * with the choice loss, also its catalogue terms: shared_c = w0 Q^T Q + reg I (k x k) and
 * offset_c = w0 Q^T d (k) (als._user_constants). */
HOT void mfrec_user_table(int64_t n_items, int k, int implicit, float w1, float s, float w0, float reg,
                          const float *q, const float *choice_bias, float *table, float *shared_c,
                          float *offset_c) {
    int D = k + 1, P = D * (D + 1) / 2, width = user_width(k, implicit);
    int64_t stride = padded(width);
    /* Column sums of the table (its packed block summed is Q^T Q) and Q^T d: in float over
     * blocks of SUM_BLOCK items (vectorised), each block's sums added up in double (so the
     * rounding error does not grow with the catalogue). */
    enum { SUM_BLOCK = 256 };
    float *part = implicit ? calloc((size_t)stride + k, sizeof(float)) : NULL;
    double *total = implicit ? calloc((size_t)stride + k, sizeof(double)) : NULL;
    for (int64_t i = 0; i < n_items; i++) {
        float *row = table + i * stride;
        memset(row, 0, sizeof(float) * stride);
        const float *qi = q + i * k;
        int e = 0;
        for (int64_t a = 0; a < k; a++) {  /* packed (q, 1)(q, 1)^T, row by row */
            for (int64_t b = a; b < k; b++) row[e++] = qi[a] * qi[b];
            row[e++] = qi[a];
        }
        row[e] = 1.0f;
        if (implicit) {
            float weight = w1 - s * choice_bias[i];
            for (int64_t a = 0; a < k; a++) row[P + a] = qi[a] * weight;
            if (part && total) {
                for (int64_t t = 0; t < stride; t++) part[t] += row[t];
                for (int64_t a = 0; a < k; a++) part[stride + a] += qi[a] * choice_bias[i];
                if ((i + 1) % SUM_BLOCK == 0 || i + 1 == n_items) {
                    for (int64_t t = 0; t < stride + k; t++) {
                        total[t] += part[t];
                        part[t] = 0.0f;
                    }
                }
            }
        }
    }
    if (implicit) {
        int ok = part && total, e = 0;
        for (int64_t a = 0; a < k; a++, e++) {  /* e walks the packed (q, 1) block; skip the q_a column */
            for (int64_t b = a; b < k; b++, e++)
                shared_c[a * k + b] = shared_c[b * k + a] = ok ? (float)(w0 * total[e]) : NAN;
            shared_c[a * k + a] += reg;
            offset_c[a] = ok ? (float)(w0 * total[stride + a]) : NAN;  /* NaN: out of memory, fails loudly */
        }
    }
    free(part);
    free(total);
}

/* User step for rows [lo, hi): the rating system (D = k + 1: factors and bias) and, with the
 * choice loss, the choice system (k x k: s * sum q q^T + shared_c, rhs sum - offset_c).
 * The rating system's prior is reg on the factors, bias_reg on the bias. sq_error receives
 * the squared rating error at the solution. Returns the number of systems that were not positive definite (their
 * solutions are NaN), or -1 when out of memory. */
HOT int64_t mfrec_user_rows(const int32_t *crow, const void *cols, int cols_u16, const void *codes, int codes_u8,
                        float scale, const float *table, const float *q, const float *item_bias, float mu, int k,
                        int implicit, float s, float reg, float bias_reg, const float *shared_c, const float *offset_c,
                        float *bias, float *p, float *c, double *sq_error, int64_t lo, int64_t hi) {
    csr_t m = {crow, cols, cols_u16, codes, codes_u8, scale};
    int D = k + 1, P = D * (D + 1) / 2, width = user_width(k, implicit);
    int64_t stride = padded(width);
    float *work = malloc(sizeof(float) * ((size_t)G * (stride + D) + (size_t)(2 * D * D + 2 * D) * G + D));
    if (!work) return -1;
    double sq[G];  /* each row's sum of squared residuals */
    float *sums = work, *rhs = sums + G * stride, *A = rhs + G * D, *x = A + D * D * G;
    float *Ac = x + D * G, *xc = Ac + D * D * G, *prior = xc + D * G;
    for (int64_t a = 0; a < D; a++) prior[a] = a < k ? reg : bias_reg;
    int64_t bad = 0;
    double sq_total = 0.0;
    for (int64_t first = lo; first < hi; first += G) {
        int n = hi - first < G ? (int)(hi - first) : G;
        memset(sums, 0, sizeof(float) * G * stride);
        memset(rhs, 0, sizeof(float) * G * D);
        for (int64_t g = 0; g < n; g++)
            sq[g] = row_sums(&m, crow[first + g], crow[first + g + 1], table, stride, q, item_bias, mu, k,
                             sums + g * stride, rhs + g * D);
        int e = 0;
        for (int64_t a = 0; a < D; a++)
            for (int64_t t = a; t < D; t++, e++) {
                float *dst = A + (a * D + t) * G;
                for (int64_t g = 0; g < G; g++) dst[g] = sums[g * stride + e];
            }
        if (implicit) {
            for (int64_t a = 0; a < k; a++)
                for (int64_t t = a; t < k; t++) {
                    float *dst = Ac + (a * k + t) * G;
                    const float *src = A + (a * D + t) * G;
                    for (int64_t g = 0; g < G; g++) dst[g] = s * src[g] + shared_c[a * k + t];
                }
            for (int64_t a = 0; a < k; a++)
                for (int64_t g = 0; g < G; g++) xc[a * G + g] = sums[g * stride + P + a] - offset_c[a];
        }
        for (int64_t a = 0; a < D; a++)
            for (int64_t g = 0; g < G; g++) A[(a * D + a) * G + g] += prior[a];
        for (int64_t a = 0; a < D; a++)
            for (int64_t g = 0; g < G; g++) x[a * G + g] = rhs[g * D + a];
        /* Lanes past n hold the prior alone and zero right-hand sides; unused. */
        bad += solve_group(A, x, D, n);
        if (implicit) bad += solve_group(Ac, xc, k, n);
        for (int64_t g = 0; g < n; g++) {
            /* Squared rating error at the solution without another pass over the ratings:
             * with (F + L) x = b, sum (z - f.x)^2 = sum z^2 - x.b - x^T L x. */
            double xb = 0.0, xlx = 0.0;
            for (int64_t a = 0; a < D; a++) {
                float xa = x[a * G + g];
                xb += (double)xa * rhs[g * D + a];
                xlx += (double)prior[a] * xa * xa;
            }
            sq_total += sq[g] - xb - xlx;  /* NaN when the system was not positive definite */
            int64_t u = first + g;
            for (int64_t a = 0; a < k; a++) p[u * k + a] = x[a * G + g];
            bias[u] = x[k * G + g];
            if (implicit)
                for (int64_t a = 0; a < k; a++) c[u * k + a] = xc[a * G + g];
        }
    }
    *sq_error = sq_total;
    free(work);
    return bad;
}

#ifndef MFREC_NO_PYTHON
static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
#endif
