#include "fileio.h"

#include "errors.h"

static void fileio_on_worker(uv_work_t *w)
{
    struct fileio *io = w->data;
    io->run(io);
}

static void fileio_on_loop(uv_work_t *w, int status)
{
    struct fileio *io = w->data;
    io->done(io, status == UV_ECANCELED);
}

int fileio_queue(uv_loop_t *loop, struct fileio *io, fileio_run_fn run, fileio_done_fn done)
{
    io->run = run;
    io->done = done;
    io->w.data = io;
    return uv_queue_work(loop, &io->w, fileio_on_worker, fileio_on_loop) != 0 ? RC_EIO : 0;
}
