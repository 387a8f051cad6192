#!/usr/bin/perl
# The fourth verifier: Perl's Mail::DKIM (Debian's libmail-dkim-perl, what SpamAssassin
# and amavis use), every DKIM-Signature of every *.eml in each DIR.
#
# Usage: maildkim_verify.pl DNS_PORT [LABEL=]DIR...
#
# Keys come from the suite's DNS server on 127.0.0.1:DNS_PORT (dnsd.py): Mail::DKIM has
# no offline key hook, and a resolver pointed at loopback keeps it off the network.
# Prints one harness line per signature, "PASS|FAIL LABEL maildkim-ALG FILE [DETAIL]",
# and a FAIL line for a message with no signature. Exit status 1 on any failure.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my $port = shift @ARGV or die "usage: maildkim_verify.pl DNS_PORT [LABEL=]DIR...\n";
my $resolver = Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'],
    port        => $port,
    recurse     => 1,
    udp_timeout => 5,
    tcp_timeout => 5,
    retry       => 2,
);
Mail::DKIM::DNS::resolver($resolver);

my $failed = 0;
for my $group (@ARGV) {
    my ($label, $dir) = $group =~ /^(.*)=(.*)$/ ? ($1, $2) : ($group, $group);
    for my $path (sort glob("$dir/*.eml")) {
        (my $name = $path) =~ s{.*/}{};
        open(my $fh, '<:raw', $path) or die "$path: $!\n";
        my $dkim = Mail::DKIM::Verifier->new();
        # The outbox files have CRLF line ends already, as the verifier wants them.
        while (read($fh, my $chunk, 65536)) {
            $dkim->PRINT($chunk);
        }
        close $fh;
        $dkim->CLOSE;
        my @sigs = $dkim->signatures;
        if (!@sigs) {
            $failed = 1;
            print "FAIL $label maildkim $name no signature evaluated: " . $dkim->result_detail . "\n";
            next;
        }
        # What a receiver acts on: the message's result over all its signatures.
        if ($dkim->result eq 'pass') {
            print "PASS $label maildkim-message $name\n";
        } else {
            $failed = 1;
            print "FAIL $label maildkim-message $name " . $dkim->result_detail . "\n";
        }
        for my $sig (@sigs) {
            my $alg = $sig->algorithm // 'unknown';
            my $result = $sig->result // 'none';
            my $detail = $sig->result_detail // $result;
            if ($result eq 'pass') {
                print "PASS $label maildkim-$alg $name\n";
            } elsif ($alg eq 'ed25519-sha256' && $detail =~ /unsupported algorithm/) {
                # Debian 12's Mail::DKIM (1.20230212) predates RFC 8463 support; it must
                # ignore the signature (RFC 6376 §6.1), not fail the message: the
                # message-level line below checks that.
                print "PASS $label maildkim-ed25519-ignored $name\n";
            } else {
                $failed = 1;
                print "FAIL $label maildkim-$alg $name $detail\n";
            }
        }
    }
}
exit($failed ? 1 : 0);
