/*
 * counter.S: a 512-byte boot sector whose memory and disk both change over
 * time, so a test can tell whether a revert restored them.
 *
 * Memory: at COUNTER_ADDR (0x600) the magic "VRCT" then a 32-bit count of
 * BIOS timer ticks (18.2 Hz). The count is bumped by our own INT 1Ch handler,
 * which SeaBIOS's IRQ0 handler calls on every PIT tick.
 * Disk: every 18 ticks (about a second) the main loop writes LBA 1 with
 * "VRDK", the tick count and a write sequence number, through BIOS INT 13h
 * on the boot drive (DL at entry).
 *
 * Build: as --32 counter.S -o counter.o
 *        ld -m elf_i386 -Ttext 0x7c00 --oformat binary counter.o -o counter.bin
 */
        .code16
        .set COUNTER_ADDR, 0x600        /* "VRCT", ticks (u32) */
        .set TICKS, COUNTER_ADDR + 4
        .set DISK_BUF, 0x800            /* "VRDK", ticks (u32), writes (u32) */
        .set INT1C_VECTOR, 0x1c * 4

        .globl _start
_start:
        ljmp    $0, $start              /* normalise CS:IP to 0000:7c00-based */
start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        movb    %dl, boot_drive
        movl    $0x54435256, COUNTER_ADDR       /* "VRCT" little-endian */
        movl    $0, TICKS
        movl    $0, writes
        movl    $0, last_write
        movw    $tick, INT1C_VECTOR
        movw    $0, INT1C_VECTOR + 2
        sti

main_loop:
        hlt                             /* sleep until the next interrupt */
        movl    TICKS, %eax
        movl    %eax, %ebx
        subl    last_write, %ebx
        cmpl    $18, %ebx
        jb      main_loop
        movl    %eax, last_write
        incl    writes
        movl    $0x4b445256, DISK_BUF           /* "VRDK" */
        movl    %eax, DISK_BUF + 4
        movl    writes, %eax
        movl    %eax, DISK_BUF + 8
        movw    $0x0301, %ax            /* AH=03 write, AL=1 sector */
        movw    $0x0002, %cx            /* cylinder 0, sector 2 (= LBA 1) */
        xorb    %dh, %dh                /* head 0 */
        movb    boot_drive, %dl
        movw    $DISK_BUF, %bx          /* ES:BX = 0000:0800 */
        int     $0x13
        jmp     main_loop

tick:                                   /* INT 1Ch: called on every timer tick */
        incl    %cs:TICKS
        iret

boot_drive:     .byte 0
        .balign 4
writes:         .long 0
last_write:     .long 0

        .org    510
        .word   0xaa55
