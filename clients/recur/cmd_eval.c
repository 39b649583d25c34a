#include "recur.h"
int cmd_eval(int argc, char **argv) { return EX_USAGE; }
