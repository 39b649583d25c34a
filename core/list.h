/*
 * list.h — the one intrusive doubly linked list (header only).
 *
 * An object that can be on a list embeds a `struct list_node`; the list is a
 * `struct list` holding its first and last node. Nothing is allocated: linking
 * and unlinking only rewrite pointers, so they cannot fail. Both structs are
 * valid when zeroed (an empty list, an unlinked node), so objects from
 * rc_calloc need no init call. An object on several lists embeds one node per
 * list.
 *
 *     struct conn { int fd; struct list_node link; };
 *     struct list conns = {0};
 *     list_push_back(&conns, &c->link);
 *     LIST_FOR_EACH (struct conn, c, &conns, link)
 *         ...
 *     list_remove(&conns, &c->link);
 *
 * The list is NULL-terminated (not circular), so list_next() of the last node
 * is NULL and a node can be walked without its list at hand. A node must be
 * removed from the list it is on (not another) and only once; list_remove()
 * clears the node's links. Not thread-safe: one owner thread per list.
 */
#ifndef RECUR_LIST_H
#define RECUR_LIST_H

#include <stddef.h>

struct list_node {
    struct list_node *prev, *next; /* NULL at the ends */
};

struct list {
    struct list_node *first, *last; /* both NULL when empty */
};

static inline int list_empty(const struct list *l) { return l->first == NULL; }

static inline void list_push_back(struct list *l, struct list_node *n)
{
    n->prev = l->last;
    n->next = NULL;
    if (l->last)
        l->last->next = n;
    else
        l->first = n;
    l->last = n;
}

static inline void list_push_front(struct list *l, struct list_node *n)
{
    n->prev = NULL;
    n->next = l->first;
    if (l->first)
        l->first->prev = n;
    else
        l->last = n;
    l->first = n;
}

/* Unlink n from l (it must be on l) and clear its links. */
static inline void list_remove(struct list *l, struct list_node *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        l->first = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        l->last = n->prev;
    n->prev = n->next = NULL;
}

static inline struct list_node *list_next(const struct list_node *n) { return n->next; }

/* The object that embeds node n as `member`, or NULL when n is NULL. */
static inline void *list__object(const struct list_node *n, size_t member_offset)
{
    return n ? (void *)((char *)n - member_offset) : NULL;
}
#define LIST_ENTRY(n, type, member) ((type *)list__object((n), offsetof(type, member)))
#define LIST_FIRST(l, type, member) LIST_ENTRY((l)->first, type, member)
#define LIST_NEXT(obj, type, member) LIST_ENTRY((obj)->member.next, type, member)

/* Each object of the list, first to last, as `type *var`. The body may not
 * remove var: use LIST_FOR_EACH_SAFE for that. */
#define LIST_FOR_EACH(type, var, l, member)                                                   \
    for (type *var = LIST_FIRST(l, type, member); var; var = LIST_NEXT(var, type, member))

/* The same, and the body may remove (or free) var, but no other object. */
#define LIST_FOR_EACH_SAFE(type, var, l, member)                                              \
    for (type *var = LIST_FIRST(l, type, member),                                             \
              *var##_next = var ? LIST_NEXT(var, type, member) : NULL;                        \
         var; var = var##_next, var##_next = var ? LIST_NEXT(var, type, member) : NULL)

#endif
