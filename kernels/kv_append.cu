// kv_append: copies head rows [batch, q_len, heads, head_dim] from `q` (strides q_str, type q_dt)
// to `out` (strides o_str, type o_dt), widened to f32 and rounded to the destination type, and
// rotates the first 2 * rope_half dims with the per-(batch, token) cos/sin rows of rope_cos /
// rope_sin ([batch, q_len, rope_half], the host's copy of the crate's f64-computed RopeTable), as
// src/cache.rs does on the CPU (read f32, rope::rotate_f32, write rounded).
// Row (b, s) reads source sequence index src_rows[b, s] (s when src_rows is 0) and writes
// destination index dst_rows[b, s]: a cache append (dst = slots), a StreamingLLM gather (src =
// kept slots, re-rotated by their new index) and a compaction (through a scratch buffer, so source
// and destination never overlap) are all this one kernel.
// Geometry: grid (q_len, heads, batch), 64 threads striding over head_dim. No shared memory, no
// barriers: every thread writes its own elements.
KERNEL void kv_append(const GaParams p) {
    const int s = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    if (s >= p.q_len || h >= p.kv_heads || b >= p.batch) return;
    const ga_i64 bs = (ga_i64)b * p.q_len + s;
    const ga_i64 src_seq = p.src_rows ? ((const ga_i64*)p.src_rows)[bs] : (ga_i64)s;
    const ga_i64 dst_seq = ((const ga_i64*)p.dst_rows)[bs];
    const ga_i64 src = b * p.q_str[0] + src_seq * p.q_str[1] + h * p.q_str[2];
    const ga_i64 dst = b * p.o_str[0] + dst_seq * p.o_str[1] + h * p.o_str[2];
    const int half = p.rope_half;
    for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
        float x = ga_load(p.q, src + d, p.q_dt);
        if (p.rope_cos && d < 2 * half) {
            // First of a pair a·c - b·s, second b·c + a·s (rope::rotate_f32); the partner is read
            // from the source, which no thread writes.
            int f, partner;
            bool first;
            if (p.rope_gptj) {
                f = d >> 1;
                partner = d ^ 1;
                first = (d & 1) == 0;
            } else {
                first = d < half;
                f = first ? d : d - half;
                partner = first ? d + half : d - half;
            }
            const ga_i64 t = bs * half + f;
            const float c = ((const float*)p.rope_cos)[t], sn = ((const float*)p.rope_sin)[t];
            const float y = ga_load(p.q, src + partner, p.q_dt);
#ifdef GA_FAULT_APPEND_ROPE
            x = x * c + y * sn;  // planted: the first of a pair rotated the wrong way
#else
            x = first ? x * c - y * sn : x * c + y * sn;
#endif
        }
        ga_store(p.out, dst + d, p.o_dt, x);
    }
}
