/*
 * cli.h — the server's subcommand, `recurd serve`.
 *
 * Like every subcommand (the offline ones are in tools/tools.h) it is
 * `int cmd_NAME(int argc, char **argv)` with argv[0] the subcommand name,
 * returning the process exit status (0 ok, 1 runtime failure, 2 usage
 * error). main.c holds the table of all of them.
 */
#ifndef RECUR_CLI_H
#define RECUR_CLI_H

int cmd_serve(int argc, char **argv);

#endif
