using System.Diagnostics;
using OpenTelemetry;

namespace EventPipeline.ServiceDefaults;

/// <summary>
/// Completes MassTransit's consumer spans with the messaging semantic conventions' required <c>messaging.system</c>:
/// MassTransit 8.5 sets it on send spans only, so receive/process spans could not be told apart by broker. The value is
/// the scheme of the endpoint the message came in on (<c>rabbitmq://…</c> → <c>rabbitmq</c>).
/// </summary>
public sealed class MassTransitMessagingTags : BaseProcessor<Activity>
{
    private const string MessagingSystem = "messaging.system";
    private static readonly string[] AddressTags = ["messaging.masstransit.input_address", "messaging.masstransit.destination_address"];

    public override void OnStart(Activity activity) => Complete(activity);

    // Again at the end: MassTransit adds some tags only after the span started.
    public override void OnEnd(Activity activity) => Complete(activity);

    private static void Complete(Activity activity)
    {
        if (activity.Source.Name != "MassTransit" || activity.GetTagItem(MessagingSystem) is not null)
        {
            return;
        }

        foreach (var tag in AddressTags)
        {
            if (activity.GetTagItem(tag) is string address && Uri.TryCreate(address, UriKind.Absolute, out var uri)
                && uri.Scheme is "rabbitmq" or "rabbitmqs")
            {
                activity.SetTag(MessagingSystem, "rabbitmq");
                return;
            }
        }
    }
}
