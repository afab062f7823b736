/*
 * allreduce_bench.c - time MPI_Allreduce per message size, printed the way nccl-tests'
 * all_reduce_perf prints it: one line per size with time, algbw and busbw, then the average.
 *
 *   algbw = bytes / time                       (GB/s, 1 GB = 1e9 bytes)
 *   busbw = algbw * 2 * (nranks - 1) / nranks  (what each link carries in a ring all-reduce)
 *
 * Build:  python 03-cluster-runner-simulation/mpi_bench.py build    (mpicc, cached)
 * Run:    mpirun -np 2 allreduce_bench -b 1K -e 16M -f 4 -n 10 -w 2
 *
 * Options (sizes take K, M or G suffixes, powers of 1024):
 *   -b MIN   smallest message in bytes (default 8)
 *   -e MAX   largest message in bytes (default 32M)
 *   -f N     multiply the size by N from one line to the next (default 2)
 *   -n N     timed iterations per size (default 20)
 *   -w N     warm-up iterations per size, not timed (default 5)
 *   -c 0|1   check the result of one more all-reduce per size (default 1)
 *
 * Every rank sends (rank + 1 + i % 7) in element i; the sum is known, so "#wrong" counts
 * the elements of rank 0's result that differ from it. Time is the slowest rank's mean per
 * iteration. Exit status: 0 ok, 1 wrong values, 2 bad arguments or out of memory.
 * The name of a rank's node is $NODE_ID when set (the simulator's nodes set it), else the
 * MPI processor name.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NAME_LEN 64
#define MAX_BYTES_LIMIT (1LL << 34) /* 16 GiB: a typo such as -e 1T is refused */

struct options {
    long long min_bytes, max_bytes;
    long long factor;
    int iters, warmup, check;
};

static int parse_size(const char *text, long long *out)
{
    char *end = NULL;
    long long value = strtoll(text, &end, 10);
    if (end == text || value <= 0)
        return -1;
    switch (*end) {
    case 'K': case 'k': value <<= 10; end++; break;
    case 'M': case 'm': value <<= 20; end++; break;
    case 'G': case 'g': value <<= 30; end++; break;
    default: break;
    }
    if (*end != '\0' || value > MAX_BYTES_LIMIT)
        return -1;
    *out = value;
    return 0;
}

static int parse_count(const char *text, int low, int *out)
{
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < low || value > 1000000)
        return -1;
    *out = (int)value;
    return 0;
}

/* 0 on success; otherwise the message to print (every rank parses the same argv). */
static const char *parse_options(int argc, char **argv, struct options *o)
{
    int factor = 2;
    o->min_bytes = 8;
    o->max_bytes = 32LL << 20;
    o->iters = 20;
    o->warmup = 5;
    o->check = 1;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = value == NULL;
        if (!bad && strcmp(flag, "-b") == 0)
            bad = parse_size(value, &o->min_bytes);
        else if (!bad && strcmp(flag, "-e") == 0)
            bad = parse_size(value, &o->max_bytes);
        else if (!bad && strcmp(flag, "-f") == 0)
            bad = parse_count(value, 2, &factor);
        else if (!bad && strcmp(flag, "-n") == 0)
            bad = parse_count(value, 1, &o->iters);
        else if (!bad && strcmp(flag, "-w") == 0)
            bad = parse_count(value, 0, &o->warmup);
        else if (!bad && strcmp(flag, "-c") == 0)
            bad = parse_count(value, 0, &o->check) || o->check > 1;
        else
            return "usage: allreduce_bench [-b MIN] [-e MAX] [-f FACTOR] [-n ITERS] [-w WARMUP] [-c 0|1]";
        if (bad)
            return "allreduce_bench: bad value for an option (sizes > 0 with K/M/G, counts >= 1)";
        i++;
    }
    o->factor = factor;
    if (o->min_bytes > o->max_bytes)
        return "allreduce_bench: -b must not exceed -e";
    return NULL;
}

static void node_name(char name[NAME_LEN])
{
    const char *node = getenv("NODE_ID");
    int length = 0;
    char processor[MPI_MAX_PROCESSOR_NAME];
    if (node != NULL && node[0] != '\0') {
        snprintf(name, NAME_LEN, "%.63s", node);
        return;
    }
    MPI_Get_processor_name(processor, &length);
    snprintf(name, NAME_LEN, "%.63s", processor);
}

static void print_ranks(int rank, int nranks)
{
    char mine[NAME_LEN] = {0};
    char *all = NULL;
    int pid = (int)getpid();
    int *pids = NULL;
    node_name(mine);
    if (rank == 0) {
        all = calloc((size_t)nranks, NAME_LEN);
        pids = calloc((size_t)nranks, sizeof(int));
    }
    MPI_Gather(mine, NAME_LEN, MPI_CHAR, all, NAME_LEN, MPI_CHAR, 0, MPI_COMM_WORLD);
    MPI_Gather(&pid, 1, MPI_INT, pids, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        for (int r = 0; r < nranks; r++)
            printf("#  Rank %2d Pid %7d on %s\n", r, pids[r], all + (size_t)r * NAME_LEN);
        free(all);
        free(pids);
    }
}

static long long check_result(const float *result, long long count, int nranks)
{
    long long wrong = 0;
    float base = (float)nranks * (float)(nranks + 1) / 2.0f;
    for (long long i = 0; i < count; i++)
        if (result[i] != base + (float)nranks * (float)(i % 7))
            wrong++;
    return wrong;
}

static void fill(float *data, long long count, int rank)
{
    for (long long i = 0; i < count; i++)
        data[i] = (float)(rank + 1) + (float)(i % 7);
}

/* The slowest rank's mean seconds per all-reduce of count floats. */
static double time_allreduce(float *send, float *recv, long long count, const struct options *o)
{
    double started, mine, slowest = 0.0;
    for (int i = 0; i < o->warmup; i++)
        MPI_Allreduce(send, recv, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    started = MPI_Wtime();
    for (int i = 0; i < o->iters; i++)
        MPI_Allreduce(send, recv, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    mine = (MPI_Wtime() - started) / o->iters;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return slowest;
}

static int run(const struct options *o, int rank, int nranks)
{
    size_t largest = (size_t)(o->max_bytes / (long long)sizeof(float)) * sizeof(float);
    float *send = malloc(largest > 0 ? largest : sizeof(float));
    float *recv = malloc(largest > 0 ? largest : sizeof(float));
    double bus_factor = 2.0 * (nranks - 1) / nranks, busbw_sum = 0.0;
    long long total_wrong = 0;
    int lines = 0, ok = send != NULL && recv != NULL, all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_ok) {
        if (rank == 0)
            fprintf(stderr, "allreduce_bench: cannot allocate 2 x %zu bytes\n", largest);
        free(send);
        free(recv);
        return 2;
    }
    if (rank == 0) {
        printf("#\n#%75s\n", "out-of-place");
        printf("#%11s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %6s\n", "size", "count", "type",
               "redop", "root", "time", "algbw", "busbw", "#wrong");
        printf("#%11s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %6s\n", "(B)", "(elements)", "", "",
               "", "(us)", "(GB/s)", "(GB/s)", "");
    }
    for (long long bytes = o->min_bytes; bytes <= o->max_bytes; bytes *= o->factor) {
        long long count = bytes / (long long)sizeof(float);
        long long wrong = 0;
        double seconds, algbw, busbw;
        if (count == 0)
            count = 1;
        fill(send, count, rank);
        seconds = time_allreduce(send, recv, count, o);
        if (o->check) {
            memset(recv, 0, (size_t)count * sizeof(float));
            MPI_Allreduce(send, recv, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            wrong = check_result(recv, count, nranks);
        }
        algbw = (double)(count * (long long)sizeof(float)) / seconds / 1e9;
        busbw = algbw * bus_factor;
        busbw_sum += busbw;
        total_wrong += wrong;
        lines++;
        if (rank == 0) {
            printf("%12lld  %12lld  %8s  %6s  %6d  %7.1f  %6.2f  %6.2f  %6lld\n",
                   count * (long long)sizeof(float), count, "float", "sum", -1, seconds * 1e6,
                   algbw, busbw, wrong);
            fflush(stdout);
        }
        if (bytes > MAX_BYTES_LIMIT / o->factor)
            break;
    }
    if (rank == 0) {
        printf("# Out of bounds values : %lld %s\n", total_wrong, total_wrong ? "FAILED" : "OK");
        printf("# Avg bus bandwidth    : %.3f\n#\n", lines ? busbw_sum / lines : 0.0);
    }
    free(send);
    free(recv);
    return total_wrong ? 1 : 0;
}

int main(int argc, char **argv)
{
    struct options o;
    int rank = 0, nranks = 1, status;
    const char *problem;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    problem = parse_options(argc, argv, &o);
    if (problem != NULL) {
        if (rank == 0)
            fprintf(stderr, "%s\n", problem);
        MPI_Finalize();
        return 2;
    }
    if (rank == 0) {
        printf("# allreduce_bench (MPI_Allreduce, float sum): nranks %d minBytes %lld "
               "maxBytes %lld step: %lld(factor) warmup iters: %d iters: %d validation: %d\n",
               nranks, o.min_bytes, o.max_bytes, o.factor, o.warmup, o.iters, o.check);
        printf("#\n# Ranks\n");
    }
    print_ranks(rank, nranks);
    status = run(&o, rank, nranks);
    MPI_Finalize();
    return status;
}
