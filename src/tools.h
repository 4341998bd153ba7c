/* tools.h - the `qvl TOOL ...` subcommands; each returns the process exit code
 * (0 ok, 1 runtime error, 2 usage error). argv[0] is the tool name. */
#ifndef QVL_TOOLS_H
#define QVL_TOOLS_H

int tool_synth_main(int argc, char **argv);
int tool_tokenize_main(int argc, char **argv);
int tool_dump_main(int argc, char **argv);
int tool_bench_main(int argc, char **argv);
int tool_quantize_main(int argc, char **argv);

#endif
