#include "recur.h"
int cmd_load(int argc, char **argv) { return EX_USAGE; }
