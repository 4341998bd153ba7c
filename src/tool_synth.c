/* tool_synth.c - `qvl synth -c CONFIG.json --seed N -o DIR`: write a synthetic
 * checkpoint (the recipe in SYNTH.md) for tests and benchmarks. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "synth.h"
#include "tools.h"

static void synth_usage(FILE *f) {
    fprintf(f, "usage: qvl synth -c CONFIG.json --seed N -o DIR [-t THREADS] [-q]\n"
               "Writes DIR/config.json and DIR/model.safetensors (bf16) following the synthetic\n"
               "weight recipe, and copies preprocessor_config.json when it sits beside CONFIG.json.\n");
}

int tool_synth_main(int argc, char **argv) {
    static const struct option longopts[] = {
        { "config", required_argument, 0, 'c' }, { "seed", required_argument, 0, 's' },
        { "output", required_argument, 0, 'o' }, { "threads", required_argument, 0, 't' },
        { "quiet", no_argument, 0, 'q' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *config = NULL, *out = NULL;
    unsigned long long seed = 0;
    int have_seed = 0, threads = 2, quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:o:t:qh", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'c': config = optarg; break;
        case 'o': out = optarg; break;
        case 's':
            seed = strtoull(optarg, &end, 0);
            if (!*optarg || *end || optarg[0] == '-') {
                fprintf(stderr, "qvl synth: --seed: '%s' is not a non-negative integer\n", optarg);
                return 2;
            }
            have_seed = 1;
            break;
        case 't':
            threads = (int)strtol(optarg, &end, 10);
            if (*end || threads < 1 || threads > 64) {
                fprintf(stderr, "qvl synth: --threads: '%s' is not a number from 1 to 64\n", optarg);
                return 2;
            }
            break;
        case 'q': quiet = 1; break;
        case 'h': synth_usage(stdout); return 0;
        default: synth_usage(stderr); return 2;
        }
    }
    if (!config || !out || !have_seed || optind != argc) {
        fprintf(stderr, "qvl synth: %s\n", !config ? "-c CONFIG.json is required" : !out ? "-o DIR is required"
                                           : !have_seed ? "--seed N is required" : "unexpected argument");
        synth_usage(stderr);
        return 2;
    }
    char err[QVL_ERR_MAX];
    double t0 = qvl_now();
    if (synth_write(config, seed, out, threads, err) != 0) {
        fprintf(stderr, "qvl synth: %s\n", err);
        return 1;
    }
    if (!quiet) fprintf(stderr, "qvl synth: wrote %s/model.safetensors in %.2f s\n", out, qvl_now() - t0);
    return 0;
}
