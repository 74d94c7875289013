/* Minimum s-t cut by Boykov and Kolmogorov's augmenting-path algorithm ("An Experimental
 * Comparison of Min-Cut/Max-Flow Algorithms for Energy Minimization in Vision", PAMI 2004):
 * two search trees, grown from the source and from the sink, that are kept between
 * augmentations instead of being rebuilt by a new search each time.
 *
 * Written for maskmesh (classical_maxflow.py loads it with ctypes; no Python headers). Plain
 * C99, no allocation outside mm_mincut, no global state: safe to call from several threads.
 *
 * Input: n nodes; m undirected pairs (tail[k], head[k]) with capacity cap[k] from tail to head
 * and rcap[k] back; per node a terminal capacity tr[i] (> 0: from the source, < 0: to the
 * sink). Output: side[i] = 1 for the nodes the source reaches in the residual graph of the
 * maximum flow (the smallest minimum cut's source side; every maximum flow gives the same
 * set), 0 for the others. Returns the flow value, or -1 when out of memory.
 */

#include <stdint.h>
#include <stdlib.h>

#define FREE 0
#define SRC 1
#define SNK 2
#define TERMINAL (-1) /* parent of a tree's root */
#define ORPHAN (-2)
#define NONE (-3) /* parent of a free node */
#define INF_DIST 0x7fffffff

typedef int64_t cap_t;

typedef struct {
    int32_t *data;
    int64_t head, size, cap; /* ring buffer of node ids */
} queue_t;

static int q_init(queue_t *q, int64_t cap) {
    q->data = malloc(sizeof(int32_t) * (size_t)(cap > 0 ? cap : 1));
    q->head = q->size = 0;
    q->cap = cap > 0 ? cap : 1;
    return q->data != NULL;
}

static void q_push(queue_t *q, int32_t v) { /* callers keep at most cap entries */
    q->data[(q->head + q->size) % q->cap] = v;
    q->size++;
}

static int32_t q_pop(queue_t *q) {
    int32_t v = q->data[q->head];
    q->head = (q->head + 1) % q->cap;
    q->size--;
    return v;
}

typedef struct {
    int32_t n;
    int64_t *first;  /* (n + 1) arcs of node i: first[i] .. first[i + 1] - 1 */
    int32_t *ahead;  /* (2m) head of each arc */
    int64_t *sis;    /* (2m) the reverse arc */
    cap_t *r;        /* (2m) residual capacity */
    cap_t *tr;       /* (n) residual terminal capacity: > 0 source, < 0 sink */
    int64_t *parent; /* (n) arc to the parent, TERMINAL, ORPHAN or NONE */
    uint8_t *tree;   /* (n) FREE, SRC, SNK */
    uint8_t *active; /* (n) in the active queue */
    int64_t *ts;     /* (n) time of the last origin check */
    int32_t *dist;   /* (n) nodes to the terminal, valid when ts is current */
    int64_t time;
    queue_t act, orphans;
} graph_t;

static void activate(graph_t *g, int32_t i) {
    if (!g->active[i]) {
        g->active[i] = 1;
        q_push(&g->act, i);
    }
}

static void make_orphan(graph_t *g, int32_t i) {
    g->parent[i] = ORPHAN;
    q_push(&g->orphans, i);
}

/* Push the bottleneck along source root -> ... -> u -> v -> ... -> sink root (arc a: u -> v). */
static cap_t augment(graph_t *g, int64_t a) {
    int32_t u = g->ahead[g->sis[a]], v = g->ahead[a];
    cap_t b = g->r[a];
    for (int32_t k = u;;) {
        int64_t p = g->parent[k];
        if (p == TERMINAL) {
            if (g->tr[k] < b) b = g->tr[k];
            break;
        }
        if (g->r[g->sis[p]] < b) b = g->r[g->sis[p]];
        k = g->ahead[p];
    }
    for (int32_t k = v;;) {
        int64_t p = g->parent[k];
        if (p == TERMINAL) {
            if (-g->tr[k] < b) b = -g->tr[k];
            break;
        }
        if (g->r[p] < b) b = g->r[p];
        k = g->ahead[p];
    }
    g->r[a] -= b;
    g->r[g->sis[a]] += b;
    for (int32_t k = u;;) {
        int64_t p = g->parent[k];
        if (p == TERMINAL) {
            g->tr[k] -= b;
            if (g->tr[k] == 0) make_orphan(g, k);
            break;
        }
        int32_t up = g->ahead[p];
        g->r[g->sis[p]] -= b;
        g->r[p] += b;
        if (g->r[g->sis[p]] == 0) make_orphan(g, k);
        k = up;
    }
    for (int32_t k = v;;) {
        int64_t p = g->parent[k];
        if (p == TERMINAL) {
            g->tr[k] += b;
            if (g->tr[k] == 0) make_orphan(g, k);
            break;
        }
        int32_t up = g->ahead[p];
        g->r[p] -= b;
        g->r[g->sis[p]] += b;
        if (g->r[p] == 0) make_orphan(g, k);
        k = up;
    }
    return b;
}

/* Nodes from j up to its tree's terminal, INF_DIST when its chain ends at an orphan; marks the
 * chain with the current time and its distances so later checks stop there. */
static int32_t origin_dist(graph_t *g, int32_t j) {
    int32_t d = 0, k = j;
    for (;;) {
        if (g->ts[k] == g->time) {
            d += g->dist[k];
            break;
        }
        int64_t p = g->parent[k];
        d++;
        if (p == TERMINAL) {
            g->ts[k] = g->time;
            g->dist[k] = 1;
            break;
        }
        if (p == ORPHAN || p == NONE) return INF_DIST;
        k = g->ahead[p];
    }
    for (k = j; g->ts[k] != g->time; k = g->ahead[g->parent[k]]) {
        g->ts[k] = g->time;
        g->dist[k] = d--;
    }
    return g->dist[j];
}

static void adopt(graph_t *g) {
    while (g->orphans.size) {
        int32_t i = q_pop(&g->orphans);
        uint8_t t = g->tree[i];
        int64_t best = NONE;
        int32_t dmin = INF_DIST;
        for (int64_t a = g->first[i]; a < g->first[i + 1]; a++) {
            int32_t j = g->ahead[a];
            /* j may parent i if flow can go j -> i (source tree) or i -> j (sink tree) */
            if (g->tree[j] != t || (t == SRC ? g->r[g->sis[a]] : g->r[a]) <= 0) continue;
            int32_t d = origin_dist(g, j);
            if (d < dmin) {
                dmin = d;
                best = a;
            }
        }
        if (best != NONE) {
            g->parent[i] = best;
            g->ts[i] = g->time;
            g->dist[i] = dmin + 1;
            continue;
        }
        for (int64_t a = g->first[i]; a < g->first[i + 1]; a++) { /* i becomes free */
            int32_t j = g->ahead[a];
            if (g->tree[j] != t) continue;
            if ((t == SRC ? g->r[g->sis[a]] : g->r[a]) > 0) activate(g, j); /* may regrow i */
            int64_t p = g->parent[j];
            if (p >= 0 && g->ahead[p] == i) make_orphan(g, j);
        }
        g->tree[i] = FREE;
        g->parent[i] = NONE;
    }
}

int64_t mm_mincut(int32_t n, int64_t m, const int32_t *tail, const int32_t *head,
                  const int32_t *cap, const int32_t *rcap, const int64_t *tr, uint8_t *side) {
    graph_t g = {0};
    int64_t flow = 0;
    int ok = 1;
    g.n = n;
    g.first = calloc((size_t)n + 1, sizeof(int64_t));
    g.ahead = malloc(sizeof(int32_t) * (size_t)(2 * m + 1));
    g.sis = malloc(sizeof(int64_t) * (size_t)(2 * m + 1));
    g.r = malloc(sizeof(cap_t) * (size_t)(2 * m + 1));
    g.tr = malloc(sizeof(cap_t) * (size_t)(n + 1));
    g.parent = malloc(sizeof(int64_t) * (size_t)(n + 1));
    g.tree = calloc((size_t)n + 1, 1);
    g.active = calloc((size_t)n + 1, 1);
    g.ts = calloc((size_t)n + 1, sizeof(int64_t));
    g.dist = calloc((size_t)n + 1, sizeof(int32_t));
    int64_t *fill = calloc((size_t)n + 1, sizeof(int64_t));
    ok = g.first && g.ahead && g.sis && g.r && g.tr && g.parent && g.tree && g.active && g.ts &&
         g.dist && fill && q_init(&g.act, (int64_t)n + 1) && q_init(&g.orphans, (int64_t)n + 1);
    if (!ok) {
        flow = -1;
        goto done;
    }
    /* arcs grouped by tail (counting sort), each with its reverse */
    for (int64_t k = 0; k < m; k++) {
        g.first[tail[k] + 1]++;
        g.first[head[k] + 1]++;
    }
    for (int32_t i = 0; i < n; i++) g.first[i + 1] += g.first[i];
    for (int64_t k = 0; k < m; k++) {
        int32_t u = tail[k], v = head[k];
        int64_t a = g.first[u] + fill[u]++, b = g.first[v] + fill[v]++;
        g.ahead[a] = v;
        g.ahead[b] = u;
        g.r[a] = cap[k];
        g.r[b] = rcap[k];
        g.sis[a] = b;
        g.sis[b] = a;
    }
    for (int32_t i = 0; i < n; i++) {
        g.tr[i] = tr[i];
        g.parent[i] = NONE;
        if (tr[i] != 0) {
            g.tree[i] = tr[i] > 0 ? SRC : SNK;
            g.parent[i] = TERMINAL;
            g.dist[i] = 1;
            activate(&g, i);
        }
    }
    while (g.act.size) {
        int32_t i = q_pop(&g.act);
        g.active[i] = 0;
        uint8_t t = g.tree[i];
        if (t == FREE) continue;
        int64_t path = NONE; /* an arc from the source tree to the sink tree */
        for (int64_t a = g.first[i]; a < g.first[i + 1]; a++) {
            if ((t == SRC ? g.r[a] : g.r[g.sis[a]]) <= 0) continue;
            int32_t j = g.ahead[a];
            if (g.tree[j] == FREE) {
                g.tree[j] = t;
                g.parent[j] = g.sis[a];
                g.ts[j] = g.ts[i];
                g.dist[j] = g.dist[i] + 1;
                activate(&g, j);
            } else if (g.tree[j] != t) {
                path = t == SRC ? a : g.sis[a];
                break;
            } else if (g.ts[j] <= g.ts[i] && g.dist[j] > g.dist[i]) {
                /* j is farther from the terminal than through i: a shorter parent */
                g.parent[j] = g.sis[a];
                g.ts[j] = g.ts[i];
                g.dist[j] = g.dist[i] + 1;
            }
        }
        g.time++;
        if (path != NONE) {
            activate(&g, i); /* its other arcs are looked at again later */
            flow += augment(&g, path);
            adopt(&g);
        }
    }
    for (int32_t i = 0; i < n; i++) side[i] = g.tree[i] == SRC;
done:
    free(g.first);
    free(g.ahead);
    free(g.sis);
    free(g.r);
    free(g.tr);
    free(g.parent);
    free(g.tree);
    free(g.active);
    free(g.ts);
    free(g.dist);
    free(fill);
    free(g.act.data);
    free(g.orphans.data);
    return flow;
}
